"""End to end: main.py writes the promised MLflow runs; bad configs fail before training.

One real two-job multirun (parity and opt on yeast, tiny budgets) runs once per module
into a temp directory with MLflow's default store; the tests read it back with
``mlflow.search_runs`` and the client, as a user would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from mlflow.tracking import MlflowClient

from flowsweep.config import ConfigError, register_schema
from flowsweep.run import run_job
from flowsweep.search import StructureOptimizer
from flowsweep.structure import Structure

REPO = Path(__file__).resolve().parents[1]
STEPS, ITERATIONS, INSTANCES = 6, 3, 2
SWEEP = [
    "dataset=yeast", "layout=parity,opt", "depth=2", f"instances={INSTANCES}", f"train.steps={STEPS}",
    "search=evolutionary", f"search.iterations={ITERATIONS}", "search.evaluation.steps=2", "progress=false",
]


def run_main(args: list[str], cwd: Path, data_dir: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(FLOWSWEEP_DATA_DIR=str(data_dir), FLOWSWEEP_CACHE_DIR=str(cwd / "cache"))
    return subprocess.run([sys.executable, str(REPO / "main.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@dataclass
class Sweep:
    root: Path
    uri: str
    runs: pd.DataFrame
    client: MlflowClient

    def of(self, layout: str) -> pd.DataFrame:
        return self.runs[self.runs["params.layout"] == layout].sort_values("params.instance")

    def json_artifact(self, run_id: str, name: str):
        return json.loads(Path(self.client.download_artifacts(run_id, name, str(self.root / run_id))).read_text())


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, data_dir, search_runs) -> Sweep:
    root = tmp_path_factory.mktemp("sweep")
    done = run_main(["-m", *SWEEP, f"hydra.sweep.dir={root / 'multirun'}"], root, data_dir)
    assert done.returncode == 0, done.stderr
    uri = f"sqlite:///{root / 'mlflow.db'}"
    runs = search_runs(uri, experiment_names=["flowsweep"])
    return Sweep(root, uri, runs, MlflowClient(uri))


def test_default_store_is_in_the_launch_directory(sweep):
    assert (sweep.root / "mlflow.db").is_file()
    assert not list((sweep.root / "multirun").rglob("mlflow.db")), "runs scattered into Hydra's job folders"
    assert not list((sweep.root / "multirun").rglob("mlruns"))


def test_one_finished_run_per_instance_with_the_flattened_config(sweep):
    assert len(sweep.runs) == 2 * INSTANCES and set(sweep.runs["status"]) == {"FINISHED"}
    for layout, search in (("parity", "none"), ("opt", "evolutionary")):
        runs = sweep.of(layout)
        assert list(runs["params.instance"]) == [str(i) for i in range(INSTANCES)]
        assert runs["params.instance_seed"].nunique() == INSTANCES
        assert set(runs["params.dataset"]) == {"yeast"} and set(runs["params.depth"]) == {"2"}
        assert set(runs["params.search"]) == {search}
        assert set(runs["params.train.steps"]) == {str(STEPS)}
        assert set(runs["params.dataset.batch_size"]) == {"29"}
        assert set(runs["params.search.evaluation.warm_start"]) == {"fresh"}
        assert list(runs["tags.mlflow.runName"]) == [f"yeast-{layout}-L2-i{i:02d}" for i in range(INSTANCES)]
    # the same instance seeds for both layouts: instance i differs only in its structure
    assert list(sweep.of("parity")["params.instance_seed"]) == list(sweep.of("opt")["params.instance_seed"])


def test_a_multirun_shares_one_sweep_id(sweep):
    assert set(sweep.runs["tags.sweep_id"]) == {str(sweep.root / "multirun")}
    assert sweep.runs["tags.fingerprint"].nunique() == 2  # one per job


def test_metrics(sweep):
    d, m, depth = 8, 4, 2
    expected_params = depth * 2 * d + depth * (2 * (d - m) * m + 2 * (d - m))
    for _, run in sweep.runs.iterrows():
        assert run["metrics.diverged"] == 0.0
        assert run["metrics.num_params"] == expected_params
        assert pd.notna(run["metrics.train_bpd"]) and pd.notna(run["metrics.test_bpd"])
        assert run["metrics.wall_time_s"] > 0
        curve = sweep.client.get_metric_history(run["run_id"], "batch_bpd")
        assert [point.step for point in curve] == list(range(1, STEPS + 1))


def test_masks_and_figures(sweep):
    for _, run in sweep.of("parity").iterrows():
        masks = sweep.json_artifact(run["run_id"], "masks.json")
        assert masks == {"d": 8, "m": 4, "conditioning": [[0, 2, 4, 6], [1, 3, 5, 7]]}
        assert run["metrics.pair_coverage"] == pytest.approx(Structure.from_dict(masks).pair_coverage())
    for _, run in sweep.runs.iterrows():
        names = {a.path for a in sweep.client.list_artifacts(run["run_id"])}
        assert {"masks.json", "masks.png", "bpd_curve.png"} <= names
        png = Path(sweep.client.download_artifacts(run["run_id"], "masks.png", str(sweep.root / "png")))
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_search_trial_is_logged(sweep):
    for _, run in sweep.of("opt").iterrows():
        run_id = run["run_id"]
        assert "search_trajectory.png" in {a.path for a in sweep.client.list_artifacts(run_id)}
        trials = sweep.json_artifact(run_id, "search_trials.json")
        assert [t["t"] for t in trials] == list(range(ITERATIONS + 1))
        assert trials[0]["accepted"] and all(t["state"] in ("complete", "diverged") for t in trials)
        best = [t for t in trials if t["accepted"]][-1]
        assert sweep.json_artifact(run_id, "masks.json")["conditioning"] == best["conditioning"]
        assert run["metrics.search_trials"] == ITERATIONS + 1
        best_curve = sweep.client.get_metric_history(run_id, "search_best_bpd")
        assert [p.step for p in best_curve] == list(range(ITERATIONS + 1))
        values = [p.value for p in best_curve]
        assert all(b <= a for a, b in zip(values, values[1:]))
        assert values[-1] == pytest.approx(best["value"])
        accepted = sweep.client.get_metric_history(run_id, "search_accepted")
        assert [p.value for p in accepted] == [float(any(t["accepted"] for t in trials if t["t"] == s))
                                                for s in range(ITERATIONS + 1)]


def test_cfg_job_prints_the_config_and_runs_nothing(tmp_path, data_dir):
    done = run_main(["dataset=sonar", "depth=6", "--cfg", "job"], tmp_path, data_dir)
    assert done.returncode == 0, done.stderr
    assert "name: sonar" in done.stdout and "layers: 6" in done.stdout
    assert not (tmp_path / "mlflow.db").exists()


def test_bad_value_exits_non_zero_naming_the_key_and_logs_nothing(tmp_path, data_dir, search_runs):
    done = run_main(["dataset=yeast", "dataset.batch_size=5000"], tmp_path, data_dir)
    assert done.returncode == 2
    assert "flowsweep: error: dataset.batch_size: 5000 is larger than the training split (1202 rows)" in done.stderr
    assert "Traceback" not in done.stderr
    if (tmp_path / "mlflow.db").exists():
        assert search_runs(f"sqlite:///{tmp_path / 'mlflow.db'}", search_all_experiments=True).empty


# -- in-process: composition with hydra.compose, then run_job -------------------------------


def job(tmp_path: Path, data_dir: Path, *overrides: str, searchpath: Path | None = None):
    register_schema()
    extra = [f"hydra.searchpath=[file://{searchpath}]"] if searchpath else []
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("config", [f"data_dir={data_dir}", f"tracking.uri=sqlite:///{tmp_path / 'm.db'}",
                                  "dataset=yeast", "depth.layers=2", "instances=2", "train.steps=3", "progress=false",
                                  *extra, *overrides])


@pytest.mark.parametrize("override, key", [
    ("depth.layers=0", "depth.layers"),
    ("instances=0", "instances"),
    ("train.steps=0", "train.steps"),
    ("dataset.batch_size=2000", "dataset.batch_size"),
    ("model.m=8", "model.m"),
    ("model.m=0", "model.m"),
    ("layout.name=checkerboard", "layout.name"),
    ("dataset.test_fraction=1.5", "dataset.test_fraction"),
    ("train.max_lr=1e-9", "train.base_lr"),
])
def test_impossible_values_name_the_key_before_any_run(override, key, tmp_path, data_dir, search_runs):
    with pytest.raises(ConfigError) as error:
        run_job(job(tmp_path, data_dir, override))
    assert error.value.key == key and str(error.value).startswith(f"{key}: ")
    if (tmp_path / "m.db").exists():
        assert search_runs(f"sqlite:///{tmp_path / 'm.db'}", search_all_experiments=True).empty


def test_wrong_type_fails_at_composition_naming_the_key(tmp_path, data_dir):
    with pytest.raises(ConfigCompositionException) as error:
        job(tmp_path, data_dir, "instances=many")
    assert "instances=many" in str(error.value)
    assert "Value 'many' of type 'str' could not be converted to Integer" in str(error.value.__cause__)


@dataclass
class Exploding(StructureOptimizer):
    """Breaks in the middle of a search: the job must leave its runs FAILED."""

    def propose(self) -> list[Structure]:
        raise RuntimeError("optimizer exploded")


def test_a_crashing_job_leaves_its_runs_failed(tmp_path, data_dir, search_runs):
    (tmp_path / "search").mkdir()
    (tmp_path / "search" / "exploding.yaml").write_text(
        "defaults:\n  - /search/evaluation@evaluation: paper\n_target_: tests.test_run.Exploding\nname: exploding\niterations: 3\n")
    cfg = job(tmp_path, data_dir, "layout=opt", "search=exploding", searchpath=tmp_path)
    with pytest.raises(RuntimeError, match="optimizer exploded"):
        run_job(cfg)
    runs = search_runs(f"sqlite:///{tmp_path / 'm.db'}", experiment_names=["flowsweep"])
    assert len(runs) == 2 and set(runs["status"]) == {"FAILED"}
