"""Parallel workers (``hydra/launcher=joblib``) on one store: nothing lost, nothing doubled, failures reported.

Both a brand-new default sqlite store and a real ``mlflow server`` (sqlite backend) on
127.0.0.1. Four jobs on two worker processes (the machine's cores) write at the same time.
"""

from __future__ import annotations

import json
import shutil

from .conftest import TINY, assert_complete_jobs, all_runs
from .servers import mlflow_server

JOBLIB = ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
FAILING = "dataset.batch_size=5000"  # larger than yeast's 1202 training rows


def test_joblib_workers_share_the_default_sqlite_store_and_report_the_failed_job(flowsweep):
    done = flowsweep(*JOBLIB, *TINY, f"dataset.batch_size=16,29,32,{FAILING.split('=')[1]}",
                     "hydra.sweep.dir=multirun")
    assert done.returncode != 0, "a sweep with a failed job must not exit 0"
    assert "database is locked" not in done.stderr and "OperationalError" not in done.stderr, done.stderr
    # The failed job is one line of Hydra's (flowsweep's text), then the report: no traceback, no
    # "Error executing job" per read of its result.
    assert "Traceback" not in done.stderr and "Error executing job" not in done.stderr, done.stderr
    assert "HYDRA_FULL_ERROR" not in done.stderr, done.stderr
    assert done.stderr.count("flowsweep: error: a job failed: ConfigError: dataset.batch_size: 5000") == 1, done.stderr
    # The other three jobs ran to the end, each logged exactly once.
    assert_complete_jobs(flowsweep.default_uri, jobs=3)
    assert {r.data.params["dataset.batch_size"] for r in all_runs(flowsweep.default_uri)} == {"16", "29", "32"}
    # At the very end: which job failed and why, one line each.
    report = done.stderr[done.stderr.rindex("flowsweep: 1 of 4 jobs failed"):].splitlines()
    assert report[0] == "flowsweep: 1 of 4 jobs failed (sweep multirun):", done.stderr
    assert report[1:] == [
        f"  #3 {FAILING}: ConfigError: dataset.batch_size: 5000 is larger than the training split (1202 rows)"
    ]
    records = sorted((flowsweep.cwd / "multirun" / ".flowsweep" / "jobs").glob("*.json"))
    assert [json.loads(p.read_text())["status"] for p in records] == ["COMPLETED"] * 3 + ["FAILED"]


def test_joblib_workers_share_an_mlflow_server(flowsweep, tmp_path, empty_store):
    (tmp_path / "server").mkdir()
    shutil.copy(empty_store, tmp_path / "server" / "mlflow.db")
    with mlflow_server(f"sqlite:///{tmp_path / 'server' / 'mlflow.db'}", tmp_path / "server") as url:
        done = flowsweep(*JOBLIB, *TINY, "seed=0,1,2,3", f"tracking.uri={url}")
        assert done.returncode == 0, done.stderr
        assert "flowsweep: " not in done.stderr  # no failure report
        assert_complete_jobs(url, jobs=4)
    assert not (flowsweep.cwd / "mlflow.db").exists(), "runs went to the default store, not the server"
