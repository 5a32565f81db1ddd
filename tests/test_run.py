"""End to end: main.py writes the promised MLflow runs and tells the user how the jobs went;
bad configs fail before training.

One real two-job multirun (parity and opt on yeast, tiny budgets) runs once per module
into a temp directory with MLflow's default store; the tests read it back with
``mlflow.search_runs`` and the client, as a user would, and read what it printed.
"""

from __future__ import annotations

import io
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
from flowsweep.app.run import run_job
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
    runs: pd.DataFrame  # the instance runs
    jobs: pd.DataFrame  # the parent runs, one per job
    client: MlflowClient
    stdout: str

    def of(self, layout: str) -> pd.DataFrame:
        return self.runs[self.runs["params.layout"] == layout].sort_values("params.instance")

    def job(self, layout: str) -> pd.Series:
        (row,) = [r for _, r in self.jobs.iterrows() if r["params.layout"] == layout]
        return row

    def json_artifact(self, run_id: str, name: str):
        return json.loads(Path(self.client.download_artifacts(run_id, name, str(self.root / run_id))).read_text())


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, data_dir, search_runs) -> Sweep:
    root = tmp_path_factory.mktemp("sweep")
    done = run_main(["-m", *SWEEP, f"hydra.sweep.dir={root / 'multirun'}"], root, data_dir)
    assert done.returncode == 0, done.stderr
    uri = f"sqlite:///{root / 'mlflow.db'}"
    runs = search_runs(uri, experiment_names=["flowsweep"])
    role = runs["tags.flowsweep.role"]
    return Sweep(root, uri, runs[role == "instance"], runs[role == "job"], MlflowClient(uri), done.stdout)


def test_default_store_is_in_the_launch_directory(sweep):
    assert (sweep.root / "mlflow.db").is_file()
    assert not list((sweep.root / "multirun").rglob("mlflow.db")), "runs scattered into Hydra's job folders"
    assert not list((sweep.root / "multirun").rglob("mlruns"))


def test_one_finished_run_per_instance_nested_under_its_jobs_run(sweep):
    assert len(sweep.runs) == 2 * INSTANCES and set(sweep.runs["status"]) == {"FINISHED"}
    assert len(sweep.jobs) == 2 and set(sweep.jobs["status"]) == {"FINISHED"}
    for layout, search in (("parity", "none"), ("opt", "evolutionary")):
        runs, job = sweep.of(layout), sweep.job(layout)
        assert set(runs["tags.mlflow.parentRunId"]) == {job["run_id"]}
        assert list(runs["params.instance"]) == [str(i) for i in range(INSTANCES)]
        assert runs["tags.seed"].nunique() == INSTANCES and runs["tags.seed"].str.fullmatch("[0-9a-f]{1,16}").all()
        assert set(runs["tags.mlflow.note.content"]) == {
            f"instance {i} of yeast · {layout}{' (evolutionary)' if layout == 'opt' else ''} · depth 2: "
            f"val {v:.3f}, test {t:.3f}, train {r:.3f} bpd"
            for i, v, t, r in zip(range(INSTANCES), runs["metrics.val_bpd"], runs["metrics.test_bpd"], runs["metrics.train_bpd"])}
        assert set(runs["params.dataset"]) == {"yeast"} and set(runs["params.depth"]) == {"2"}
        assert set(runs["params.search"]) == {search}
        assert set(runs["params.train.steps"]) == {str(STEPS)}
        assert set(runs["params.dataset.batch_size"]) == {"29"}
        if layout == "opt":
            assert set(runs["params.search.evaluation.warm_start"]) == {"fresh"}
        # Unique, readable names: dataset, layout (and search), depth, the config's fingerprint, instance.
        fp, search = job["tags.fingerprint"][:6], "" if layout == "parity" else "-evolutionary"
        assert job["tags.mlflow.runName"] == f"yeast-{layout}-L2{search}-{fp}"
        assert list(runs["tags.mlflow.runName"]) == [f"yeast-{layout}-L2-i{i:02d}{search}-{fp}" for i in range(INSTANCES)]
    assert sweep.runs["tags.mlflow.runName"].nunique() == len(sweep.runs)
    # the same instance seeds for both layouts: instance i differs only in its structure
    assert list(sweep.of("parity")["tags.seed"]) == list(sweep.of("opt")["tags.seed"])


def test_params_carry_the_config_without_noise(sweep):
    params = {c[len("params."):] for c in sweep.runs.columns if c.startswith("params.")}
    assert {"train.max_lr", "dataset.validation_fraction", "seed", "instances"} <= params
    for noise in ("dataset.files", "dataset.names", "dataset.labels", "data_dir", "tracking.uri", "progress",
                  # one name per setting: dataset, layout, depth, search
                  "dataset.name", "layout.name", "depth.layers", "search.name", "search._target_", "layout._target_",
                  "instance_seed",  # a tag in hex
                  # nothing under Adam with the cosine schedule and the tanh conditioner
                  "train.momentum", "train.mode", "train.step_size_up", "model.hidden", "model.bins",
                  "model.m", "train.clip_norm"):  # null: left to its default rule
        assert not any(p == noise or p.startswith(noise + ".") for p in params), noise
    values = sweep.runs[[f"params.{p}" for p in params]]
    assert not (values == "None").any().any()
    # search.* only where a search ran
    assert sweep.of("parity")["params.search.evaluation.warm_start"].isna().all()
    assert set(sweep.of("opt")["params.search.evaluation.warm_start"]) == {"fresh"}


def test_a_jobs_run_holds_its_aggregates_and_figures(sweep):
    for layout in ("parity", "opt"):
        job, runs = sweep.job(layout), sweep.of(layout)
        for split in ("train", "val", "test"):
            values = runs[f"metrics.{split}_bpd"]
            assert job[f"metrics.{split}_bpd_mean"] == pytest.approx(values.mean(), rel=1e-9)
            assert job[f"metrics.{split}_bpd_std"] == pytest.approx(values.std(ddof=1), rel=1e-9)
        assert job["metrics.diverged_count"] == 0 and job["metrics.instances"] == INSTANCES
        assert "diverged   0 of 2" in job["tags.mlflow.note.content"]
        artifacts = {a.path for a in sweep.client.list_artifacts(job["run_id"])}
        assert {"summary.txt", "bpd_curves.png", "masks.png"} <= artifacts
        assert ("search_best.png" in artifacts) == (layout == "opt")
        for name in ("bpd_curves.png", "masks.png"):  # drawn by the writer process, beside the job
            png = Path(sweep.client.download_artifacts(job["run_id"], name, str(sweep.root / layout)))
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_terminal_and_hydras_job_log_tell_how_each_job_went(sweep):
    logs = sorted((sweep.root / "multirun").glob("[0-9]/main.log"))
    assert len(logs) == 2
    for layout, log in zip(("parity", "opt"), logs):
        job, runs = sweep.job(layout), sweep.of(layout)
        text = log.read_text()
        first = "yeast, layout parity, depth 2" if layout == "parity" else \
            "yeast, layout opt (search evolutionary), depth 2"
        assert f"{first}, {INSTANCES} instances: finished in" in text
        test = runs["metrics.test_bpd"]
        assert f"test {test.mean():.3f} ± {test.std(ddof=1):.3f}" in text
        assert f"diverged   0 of {INSTANCES}" in text
        assert f"run {job['tags.mlflow.runName']}, experiment 'flowsweep'" in text
        assert (f"mlflow ui --backend-store-uri {sweep.uri} --host 127.0.0.1, then http://127.0.0.1:5000/"
                f"#/experiments/{job['experiment_id']}/runs?viewStateShareKey=flowsweep&workflowType=machine_learning") in text
        assert text.split("] - ", 1)[1] in sweep.stdout  # the same lines on the terminal
    # At the end of the multirun, the sweep's table, also kept in the sweep folder.
    table = (sweep.root / "multirun" / "summary.txt").read_text()
    assert table in sweep.stdout and "2 of 2 jobs completed" in table
    rows = [line.replace(" *", "").split() for line in table.splitlines()[3:5]]
    assert [row[:3] for row in rows] == [["0", "layout=parity", "completed"], ["1", "layout=opt", "completed"]]
    # The job a sweeper would pick (lowest val bpd mean) is marked, and the table says what the mark means.
    best = min(("parity", "opt"), key=lambda layout: sweep.job(layout)["metrics.val_bpd_mean"])
    marked = [line for line in table.splitlines()[3:5] if line.split()[1] == "*"]
    assert len(marked) == 1 and f"layout={best}" in marked[0]
    assert table.splitlines()[-1].startswith("* the lowest val bpd mean")


def test_the_look_line_opens_a_shared_view_sorted_by_validation_bpd(sweep):
    """MLflow 3.17's UI reads ``mlflow.sharedViewState.<key>`` for ``?viewStateShareKey=<key>``: the
    search facets and UI state fields it picks (useSharedExperimentViewState) with canonical keys."""
    experiment = sweep.client.get_experiment_by_name("flowsweep")
    state = json.loads(experiment.tags["mlflow.sharedViewState.flowsweep"])
    assert {"searchFilter", "orderByKey", "orderByAsc", "startTime", "lifecycleFilter", "modelVersionFilter",
            "datasetsFilter", "selectedColumns", "runsExpanded", "groupBy", "runsHiddenMode"} <= set(state)
    assert (state["orderByKey"], state["orderByAsc"]) == ("metrics.`val_bpd_mean`", True)
    shown = {c.replace("`", "") for c in state["selectedColumns"]}
    # every metric and param column it shows exists on the runs; the jobs' and the instances' bpd both
    assert {c for c in shown if not c.startswith("attributes.")} <= set(sweep.runs.columns) | set(sweep.jobs.columns)
    assert {"metrics.val_bpd_mean", "metrics.test_bpd_mean", "metrics.val_bpd", "params.layout"} <= shown
    # In that order, results first (checked in MLflow 3.17.2's UI in headless Chromium: without an
    # order the table puts the metrics alphabetically, diverged first), bpd columns wide enough.
    assert state["columnOrder"][:3] == ["attributes.`Run Name`", "attributes.`Description`", "metrics.`val_bpd_mean`"]
    assert set(state["columnOrder"]) - {"attributes.`Run Name`"} <= set(state["selectedColumns"])
    assert state["columnWidths"]["metrics.`val_bpd_mean`"] >= 120


def test_a_multirun_shares_one_sweep_id(sweep):
    assert set(sweep.runs["tags.sweep_id"]) == {str(sweep.root / "multirun")}
    assert sweep.runs["tags.fingerprint"].nunique() == 2  # one per job


def test_every_run_names_the_commit_that_made_it(sweep):
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("not a git checkout")
    runs = pd.concat([sweep.runs, sweep.jobs])
    assert set(runs["tags.mlflow.source.git.commit"]) == {head.stdout.strip()}
    # The UI shows a commit beside a source only.
    assert set(runs["tags.mlflow.source.type"]) == {"LOCAL"}
    assert {Path(name).name for name in runs["tags.mlflow.source.name"]} == {"main.py"}


def test_the_uis_newest_first_order_lists_a_jobs_instances_from_0(sweep):
    for _, job in sweep.jobs.iterrows():
        children = sweep.client.search_runs([job["experiment_id"]], f"tags.mlflow.parentRunId = '{job['run_id']}'",
                                            order_by=["attributes.start_time DESC"])
        assert [r.data.params["instance"] for r in children] == [str(i) for i in range(INSTANCES)]


def test_metrics(sweep):
    d, m, depth = 8, 4, 2
    expected_params = depth * 2 * d + depth * (2 * (d - m) * m + 2 * (d - m))
    for _, run in sweep.runs.iterrows():
        assert run["metrics.val_bpd"] < 1e300
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
    for _, run in sweep.runs.iterrows():  # an instance's figures are its job's (one per job, not per instance)
        names = {a.path for a in sweep.client.list_artifacts(run["run_id"])}
        assert "masks.json" in names and not any(name.endswith(".png") for name in names)


def test_every_search_trial_is_logged(sweep):
    for _, run in sweep.of("opt").iterrows():
        run_id = run["run_id"]
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
        # The best-so-far curve is the value of the latest accepted trial, iteration by iteration.
        latest, expected = None, []
        for s in range(ITERATIONS + 1):
            latest = next((t["value"] for t in trials if t["t"] == s and t["accepted"]), latest)
            expected.append(latest)
        assert values == pytest.approx(expected)


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
    ("layout._target_=flowsweep.layouts.Checkerboard", "layout"),
    ("dataset.test_fraction=1.5", "dataset.test_fraction"),
    ("dataset.validation_rows=first", "dataset.validation_rows"),
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
        "defaults:\n  - /search/evaluation@evaluation: paper\n"
        "_target_: tests.test_run.Exploding\nname: exploding\niterations: 3\n")
    cfg = job(tmp_path, data_dir, "layout=opt", "search=exploding", searchpath=tmp_path)
    with pytest.raises(RuntimeError, match="optimizer exploded"):
        run_job(cfg)
    runs = search_runs(f"sqlite:///{tmp_path / 'm.db'}", experiment_names=["flowsweep"])
    assert len(runs) == 3 and set(runs["status"]) == {"FAILED"}  # the job's run and its 2 instances


def test_jobs_on_two_csv_files_are_two_datasets(tmp_path, capsys):
    import numpy as np

    from flowsweep.config.compose import compose_config
    from multirun_analysis.cli import main as analysis
    from tests.conftest import _search_runs

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    for name, seed in (("first.csv", 0), ("second.csv", 1)):
        rows = np.random.default_rng(seed).normal(size=(300, 3))
        pd.DataFrame(rows, columns=["a", "b", "c"]).to_csv(tmp_path / name, index=False)
        run_job(compose_config(["dataset=csv", f"dataset.path={tmp_path / name}", "instances=1", "train.steps=20",
                                "depth='2'", "progress=false", f"tracking.uri={uri}"]))
    runs = _search_runs(uri, experiment_names=["flowsweep"], filter_string="tags.`flowsweep.role` = 'instance'")
    assert sorted(runs["params.dataset"]) == ["first.csv", "second.csv"]
    assert sorted(runs["tags.mlflow.runName"].str.split("-").str[0]) == ["first.csv", "second.csv"]
    capsys.readouterr()
    assert analysis(["--tracking-uri", uri, "--format", "csv"]) == 0
    table = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert sorted(table["dataset"]) == ["first.csv", "second.csv"] and (table["n"] == 1).all()
