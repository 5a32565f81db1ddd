"""Fixtures of the reliability tests: ``main.py`` as a user runs it, and reading runs back.

Every test runs ``python main.py ...`` as a subprocess in its own temporary directory,
with ``MLFLOW_TRACKING_URI`` unset (so the default store, ``./mlflow.db``, is used
unless the test says otherwise), the real UCI files and a private download cache.
Budgets are tiny (yeast, 2 instances, 5 steps, depth 2): these tests are about what
happens around training, not about training.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from mlflow.entities import Run, ViewType
from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[2]

#: The smallest real job: every reliability test starts from it.
TINY = ["dataset=yeast", "instances=2", "train.steps=5", "depth=2", "progress=false"]


def tiny(*overrides: str) -> list[str]:
    """:data:`TINY` with ``overrides`` replacing the entries of the same keys (Hydra rejects duplicates)."""
    keys = {o.split("=", 1)[0] for o in overrides}
    return [o for o in TINY if o.split("=", 1)[0] not in keys] + list(overrides)


@dataclass
class Flowsweep:
    """``main.py`` run as a subprocess from ``cwd``, the way a user runs it."""

    cwd: Path
    env: dict[str, str] = field(default_factory=dict)

    def command(self, *args: str) -> list[str]:
        return [sys.executable, str(REPO / "main.py"), *args]

    def __call__(self, *args: str, timeout: float = 400) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(*args), cwd=self.cwd, env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def popen(self, *args: str, log: Path) -> subprocess.Popen:
        with open(log, "w") as out:
            return subprocess.Popen(self.command(*args), cwd=self.cwd, env=self.env, stdout=out,
                                    stderr=subprocess.STDOUT)

    @property
    def default_uri(self) -> str:
        return f"sqlite:///{self.cwd / 'mlflow.db'}"


def make_flowsweep(cwd: Path, data_dir: Path) -> Flowsweep:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "HYDRA_FULL_ERROR")}
    env.update(FLOWSWEEP_DATA_DIR=str(data_dir), FLOWSWEEP_CACHE_DIR=str(cwd / "cache"), PYTHONUNBUFFERED="1")
    return Flowsweep(cwd, env)


@pytest.fixture
def flowsweep(tmp_path: Path, data_dir: Path) -> Flowsweep:
    """``main.py`` in a fresh temporary directory (no store yet)."""
    return make_flowsweep(tmp_path, data_dir)


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ``mlflow.db`` with MLflow's schema and no experiment of ours, made once per session.

    Creating the schema costs seconds; tests that are not about a brand-new store copy this.
    """
    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def flowsweep_with_store(flowsweep: Flowsweep, empty_store: Path) -> Flowsweep:
    """``main.py`` in a temporary directory whose ``mlflow.db`` already has MLflow's schema."""
    shutil.copy(empty_store, flowsweep.cwd / "mlflow.db")
    return flowsweep


def all_runs(uri: str, experiment: str = "flowsweep") -> list[Run]:
    """Every run (deleted ones too) of ``experiment`` at ``uri``; empty if there is none."""
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs([found.experiment_id], run_view_type=ViewType.ALL, max_results=1000,
                                  page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def instance_runs(runs: list[Run]) -> list[Run]:
    """The runs of model instances (not the jobs' parent runs)."""
    return [r for r in runs if r.data.tags.get("flowsweep.role") == "instance"]


def assert_complete_jobs(uri: str, jobs: int, instances: int = 2, steps: int = 5) -> list[Run]:
    """``jobs`` jobs logged exactly once each, completely: FINISHED runs, metrics, params, artifacts.

    Returns the instance runs.
    """
    everything = all_runs(uri)
    statuses = sorted({r.info.status for r in everything})
    assert statuses == ["FINISHED"], statuses
    parents = [r for r in everything if r.data.tags.get("flowsweep.role") == "job"]
    runs = instance_runs(everything)
    assert len(parents) == jobs and len(parents) + len(runs) == len(everything)
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {p.info.run_id for p in parents}
    keys = [(r.data.tags["fingerprint"], r.data.params["instance"]) for r in runs]
    assert len(keys) == len(set(keys)), "a job instance was logged twice"
    assert len({k[0] for k in keys}) == jobs and len(runs) == jobs * instances
    client = MlflowClient(uri)
    param_counts = {len(r.data.params) for r in runs}
    assert len(param_counts) == 1, f"runs with different numbers of params: {param_counts}"
    for run in runs:
        assert {"train_bpd", "test_bpd", "diverged", "num_params", "wall_time_s"} <= set(run.data.metrics)
        history = client.get_metric_history(run.info.run_id, "batch_bpd")
        assert sorted(p.step for p in history) == list(range(1, steps + 1))
        assert "masks.json" in {a.path for a in client.list_artifacts(run.info.run_id)}
    for parent in parents:  # a job's figures are drawn by the writer process, one of each per job
        assert {"masks.png", "bpd_curves.png"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    return runs

