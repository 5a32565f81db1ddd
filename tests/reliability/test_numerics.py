"""Determinism and numerical safety, end to end on CPU.

One structure-search job whose learning rate is far too large for some of its models
(max_lr 2 reached after 2 steps: on standardized yeast it broke 6 of 12
models here, so that a model's fate is far from all-or-none) runs twice, in two processes, with the same
config and seed. The second process must log bitwise the same numbers; in both, the
models that blow up are flagged ``diverged`` and the others train on, and the job exits 0.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from .conftest import make_flowsweep, tiny

INSTANCES = 12
JOB = tiny("layout=opt", "search=evolutionary", f"instances={INSTANCES}", "search.iterations=2",
           "search.evaluation.steps=5", "train.optimizer=sgd", "train.schedule=cyclic", "train.max_lr=2",
           "train.step_size_up=2", "train.patience=null")
TIMINGS = {"wall_time_s", "train_time_s", "search_time_s"}
CURVES = ("batch_bpd", "search_best_bpd")


def _bits(value: float) -> float | str:
    """Bitwise comparable: NaN != NaN, but a NaN logged twice is the same outcome."""
    return "nan" if math.isnan(value) else value


def _numbers(run: Run) -> dict[str, float | str]:
    return {k: _bits(v) for k, v in run.data.metrics.items() if k not in TIMINGS}


def _curve(client: MlflowClient, run: Run, key: str) -> list[tuple[int, float | str]]:
    return sorted((p.step, _bits(p.value)) for p in client.get_metric_history(run.info.run_id, key))


@pytest.fixture(scope="module")
def attempts(tmp_path_factory, data_dir, empty_store) -> tuple[dict[str, Run], dict[str, Run], MlflowClient]:
    """The same job in two processes; runs of each attempt by instance index."""
    app = make_flowsweep(tmp_path_factory.mktemp("numerics"), data_dir)
    app.cwd.joinpath("mlflow.db").write_bytes(empty_store.read_bytes())
    for attempt in ("first", "second"):
        done = app(*JOB, f"tracking.sweep_id={attempt}", "rerun=true")
        assert done.returncode == 0, done.stderr
    client = MlflowClient(app.default_uri)
    experiment = client.get_experiment_by_name("flowsweep").experiment_id
    by_attempt = {a: {r.data.params["instance"]: r for r in client.search_runs(
        [experiment], filter_string=f"tags.sweep_id = '{a}' and tags.`flowsweep.role` = 'instance'")}
        for a in ("first", "second")}  # fmt: skip
    return by_attempt["first"], by_attempt["second"], client


def _trials(client: MlflowClient, run: Run, folder: Path) -> str:
    return Path(client.download_artifacts(run.info.run_id, "search_trials.json", str(folder))).read_text()


def test_same_config_and_seed_give_bitwise_identical_numbers_across_processes(attempts, tmp_path):
    first, second, client = attempts
    # rerun=true trained the config again although its runs had FINISHED.
    assert sorted(first, key=int) == sorted(second, key=int) == [str(i) for i in range(INSTANCES)]
    for instance, run in first.items():
        again = second[instance]
        assert _numbers(run) == _numbers(again), instance
        for key in CURVES:
            assert _curve(client, run, key) == _curve(client, again, key), (instance, key)
        # every search trial: structure, value, state, acceptance
        assert _trials(client, run, tmp_path / "a" / instance) == _trials(client, again, tmp_path / "b" / instance)


def test_diverging_models_are_flagged_and_contained_and_the_job_finishes(attempts):
    first, _, _ = attempts
    assert {r.info.status for r in first.values()} == {"FINISHED"}
    diverged = [r for r in first.values() if r.data.metrics["diverged"] == 1.0]
    healthy = [r for r in first.values() if r.data.metrics["diverged"] == 0.0]
    assert diverged and healthy, f"meant to break some models, not all: {len(diverged)} of {len(first)} diverged"
    for run in diverged:  # MLflow stores inf as the largest float
        assert run.data.metrics["test_bpd"] >= 1e308 and run.data.metrics["train_bpd"] >= 1e308
    for run in healthy:
        assert math.isfinite(run.data.metrics["test_bpd"]) and run.data.metrics["test_bpd"] < 1e308
    # The search met diverging trials too, and went on to its end.
    assert sum(r.data.metrics["search_diverged_trials"] for r in first.values()) > 0
    assert {r.data.metrics["search_trials"] for r in first.values()} == {3.0}
