"""Scale-out on existing engines: submitit (the SLURM launcher's code path, run locally) and a
shared MLflow tracking server backed by PostgreSQL.

``hydra/launcher=submitit_local`` goes through the same ``BaseSubmititLauncher`` as
``submitit_slurm``: jobs are pickled, run in their own processes, and their results
(failures included) come back pickled. The PostgreSQL test starts a throw-away cluster
with Debian's binaries on 127.0.0.1, an ``mlflow server`` over it, and a parallel sweep
of four jobs.
"""

from __future__ import annotations

import pytest

from .conftest import all_runs, assert_complete_jobs, tiny
from .servers import mlflow_server, postgres_bin, postgres_cluster


def test_submitit_runs_jobs_in_their_own_processes_and_reports_failures(flowsweep_with_store):
    app = flowsweep_with_store
    done = app("-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10",
               *tiny("dataset.batch_size=29,5000"), "hydra.sweep.dir=multirun")
    assert done.returncode != 0
    # The failed job is one line of Hydra's (flowsweep's text), then the report: no traceback, no
    # "Error executing job" per read of its result.
    assert "Traceback" not in done.stderr and "Error executing job" not in done.stderr, done.stderr
    assert "HYDRA_FULL_ERROR" not in done.stderr, done.stderr
    assert done.stderr.count("flowsweep: error: a job failed: ConfigError: dataset.batch_size: 5000") == 1, done.stderr
    report = done.stderr[done.stderr.rindex("flowsweep: 1 of 2 jobs failed"):].splitlines()
    assert report == ["flowsweep: 1 of 2 jobs failed (sweep multirun):",
                      "  #1 dataset.batch_size=5000: ConfigError: dataset.batch_size: 5000 is larger than the "
                      "training split (1202 rows)"]
    runs = assert_complete_jobs(app.default_uri, jobs=1)
    assert {r.data.tags["sweep_id"] for r in runs} == {"multirun"}
    # Each job ran under submitit, in a process of its own, with its own log.
    logs = sorted((app.cwd / "multirun" / ".submitit").rglob("*_log.out"))
    assert len(logs) == 2, logs


@pytest.mark.skipif(postgres_bin() is None, reason="PostgreSQL binaries (initdb, pg_ctl) not found: "
                    "apt-get install postgresql (.ci/run does)")
def test_a_team_server_on_postgresql_takes_a_parallel_sweep_of_four_jobs(flowsweep, tmp_path):
    with postgres_cluster() as database, mlflow_server(database, tmp_path / "server") as url:
        done = flowsweep("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *tiny("seed=0,1,2,3"),
                         f"tracking.uri={url}")
        assert done.returncode == 0, done.stderr
        runs = assert_complete_jobs(url, jobs=4)
        assert sorted(r.data.params["seed"] for r in runs) == sorted(str(s) for s in range(4) for _ in range(2))
        assert len({r.data.tags["sweep_id"] for r in all_runs(url)}) == 1
    assert not (flowsweep.cwd / "mlflow.db").exists(), "runs went to the default store, not the server"
