"""multirun_analysis on runs of a real small sweep in a temp MLflow store.

One session-scoped store holds four sweeps:

* ``grid``: the ``+experiment=paper_smoke`` preset cut down to yeast, sonar × depth 2, 4
  × parity, opt (composed by Hydra, one real job per cell; the multirun machinery
  itself is tested in test_run.py);
* ``seed1``: yeast / depth 2 / parity again with another seed (same settings);
* ``valid``: yeast / depth 2 / parity at the defaults, 100 steps (the paper's recipe has no
  validation split; the defaults cut one from the training rows);
* ``diverge``: yeast / depth 2 / parity with an absurd learning rate, so every instance
  diverges for real: the job fails (its runs end FAILED, tagged ``flowsweep.all_diverged``),
  and the analysis still counts its instances as diverged.

Expected numbers are computed independently from ``mlflow.search_runs``.
"""

from __future__ import annotations

import io
import itertools
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from flowsweep.config import DivergedError, register_schema
from flowsweep.app.run import run_job
from multirun_analysis.cli import main
from multirun_analysis.histories import metric_histories
from multirun_analysis.load import SUMMARY_TAG

REPO = Path(__file__).resolve().parents[1]
GRID = "grid"
INSTANCES = 2  # paper_smoke's instances
DATASETS, DEPTHS, LAYOUTS = ("sonar", "yeast"), ("2", "4"), ("parity", "opt")
# Learning rates this large make every instance's loss non-finite within a few steps.
DIVERGING = ["train.base_lr=10", "train.max_lr=10", "train.step_size_up=1"]


@dataclass
class Store:
    root: Path
    uri: str


def _compose(overrides: list[str], hydra: bool = False) -> DictConfig:
    register_schema()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides, return_hydra_config=hydra)


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Store:
    root = tmp_path_factory.mktemp("analysis")
    uri = f"sqlite:///{root}/mlflow.db"
    smoke = ["+experiment=paper_smoke", "progress=false", f"tracking.uri={uri}", f"data_dir={data_dir}"]
    jobs = [(GRID, [f"dataset={d}", f"depth='{n}'", f"layout={l}"])
            for d, n, l in itertools.product(DATASETS, DEPTHS, LAYOUTS)]
    jobs += [("seed1", ["dataset=yeast", "depth='2'", "layout=parity", "seed=1"])]
    # The defaults (a validation split cut from the training rows), cut short: val_bpd is logged.
    jobs += [("valid", ["dataset=yeast", "depth='2'", "layout=parity", "train.steps=100"])]
    jobs += [("diverge", ["dataset=yeast", "depth='2'", "layout=parity", *DIVERGING])]
    for sweep_id, overrides in jobs:
        preset = [f"instances={INSTANCES}", f"tracking.uri={uri}", f"data_dir={data_dir}", "progress=false"] \
            if sweep_id == "valid" else smoke
        cfg = _compose([*preset, f"tracking.sweep_id={sweep_id}", *overrides])
        if sweep_id == "diverge":
            with pytest.raises(DivergedError):
                run_job(cfg)
        else:
            run_job(cfg)
    return Store(root, uri)


def _runs(store: Store, *sweeps: str) -> pd.DataFrame:
    """Independent reference: the FINISHED runs of ``sweeps`` straight from mlflow.search_runs."""
    client = MlflowClient(store.uri)
    experiment = client.get_experiment_by_name("flowsweep").experiment_id
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(store.uri)
    try:
        frame = pd.concat([mlflow.search_runs([experiment], filter_string=f"tags.sweep_id = '{s}'") for s in sweeps],
                          ignore_index=True)
    finally:
        mlflow.set_tracking_uri(None)
        if previous is not None:
            os.environ["MLFLOW_TRACKING_URI"] = previous
    kept = frame["status"] == "FINISHED"
    if "tags.flowsweep.all_diverged" in frame.columns:  # a job whose every instance diverged: FAILED, yet a result
        kept |= frame["tags.flowsweep.all_diverged"] == "true"
    return frame[kept & (frame["tags.flowsweep.role"] == "instance")]


def _expected(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and std (ddof=1) of each split over non-diverged instances, per dataset/depth/layout."""
    finite = runs[runs["metrics.diverged"] == 0]
    keys = ["params.dataset", "params.depth", "params.layout"]
    splits = [f"metrics.{s}_bpd" for s in ("train", "val", "test") if f"metrics.{s}_bpd" in runs.columns]
    stats = finite.groupby(keys)[splits].agg(["mean", "std"])
    stats.columns = [f"{m[len('metrics.'):]}_{s}" for m, s in stats.columns]
    counts = runs.groupby(keys).agg(n=("run_id", "size"), n_diverged=("metrics.diverged", "sum"))
    out = counts.join(stats)
    out.index.names = ["dataset", "depth", "layout"]
    return out


def _cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _csv(store: Store, capsys: pytest.CaptureFixture, *args: str) -> pd.DataFrame:
    code, out, err = _cli(capsys, "--tracking-uri", store.uri, "--format", "csv", *args)
    assert code == 0, err
    return pd.read_csv(io.StringIO(out), dtype={"depth": str}).set_index(["dataset", "depth", "layout"])


# --- presets ---------------------------------------------------------------------------

@pytest.mark.parametrize("preset, instances, steps, iterations, steps_per_trial",
                         [("paper", 20, 1250, 200, 50), ("paper_smoke", 2, 10, 2, 2)])
def test_preset_grid_and_budgets(preset: str, instances: int, steps: int, iterations: int,
                                 steps_per_trial: int) -> None:
    text = (REPO / "conf" / "experiment" / f"{preset}.yaml").read_text()
    assert text.startswith("# @package _global_\n")
    cfg = _compose([f"+experiment={preset}"], hydra=True)
    params = cfg.hydra.sweeper.params
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    grid = {o.key_or_group: [v.strip("'") for v in o.sweep_string_iterator()] for o in parsed}
    assert grid == {"dataset": ["magic", "turbine", "sonar", "yeast"], "depth": ["2", "4", "6", "8"],
                    "layout": ["random", "parity", "opt"]}
    assert (cfg.instances, cfg.train.steps, cfg.search.iterations, cfg.search.evaluation.steps) == (
        instances, steps, iterations, steps_per_trial)
    # Algorithm 1 as written, the paper's optimizer and schedule, and stage 1's calibrated learning rate
    assert cfg.search.name == "evolutionary" and cfg.search.evaluation.value == "last_batch"
    assert (cfg.train.optimizer, cfg.train.schedule) == ("sgd", "cyclic")
    assert cfg.train.max_lr == (1e-4 if preset == "paper" else 1e-2)  # smoke: ten steps that move the models
    assert cfg.dataset.validation_fraction == 0 and not cfg.dataset.dequantize  # every training row, as they are


# --- tables ----------------------------------------------------------------------------

def test_table_values_are_means_and_stds_of_the_runs(store: Store, capsys: pytest.CaptureFixture) -> None:
    table = _csv(store, capsys, "--sweep", GRID)
    expected = _expected(_runs(store, GRID))
    assert len(table) == len(DATASETS) * len(DEPTHS) * len(LAYOUTS)
    assert sorted(table.index) == sorted(expected.index)
    table = table.loc[expected.index]
    assert (table["n"] == INSTANCES).all()
    assert (table["n_diverged"].to_numpy() == expected["n_diverged"].to_numpy()).all()
    for column in ("train_bpd_mean", "train_bpd_std", "test_bpd_mean", "test_bpd_std"):
        np.testing.assert_allclose(table[column], expected[column], rtol=1e-9, equal_nan=True)


@pytest.mark.parametrize("fmt, mark, marker", [("text", "{} *", r"\d \*"), ("markdown", "**{}**", r"\*\*[-\d]"),
                                               ("latex", r"\bfseries {}", r"\\bfseries")])
def test_best_of_each_row_is_marked(store: Store, capsys: pytest.CaptureFixture, fmt: str, mark: str,
                                    marker: str) -> None:
    code, out, err = _cli(capsys, "--tracking-uri", store.uri, "--sweep", GRID, "--format", fmt)
    assert code == 0, err
    expected = _expected(_runs(store, GRID))
    pm = r"$\pm$" if fmt == "latex" else "±"
    for dataset in DATASETS:
        assert out.count(dataset) >= 1
        for depth in DEPTHS:
            row = expected.loc[(dataset, depth)]
            cells = {layout: f"{stats.test_bpd_mean:.3f} {pm} {stats.test_bpd_std:.3f}"
                     + (f" ({int(stats.n_diverged)} div.)" if stats.n_diverged else "")
                     for layout, stats in row.iterrows()}
            for layout, stats in row.iterrows():
                if list(cells.values()).count(cells[layout]) > 1:
                    continue  # two cells of the row read the same: the text cannot say which is marked
                is_best = stats.test_bpd_mean == row["test_bpd_mean"].min()
                assert (mark.format(cells[layout]) in out) == is_best, (fmt, dataset, depth, layout)
    assert len(re.findall(marker, out)) == len(DATASETS) * len(DEPTHS)  # one per row (no ties in these runs)


@pytest.mark.parametrize("split, sweep", [("train", GRID), ("val", "valid")])
def test_the_train_and_validation_splits(split: str, sweep: str, store: Store, capsys: pytest.CaptureFixture) -> None:
    code, out, _ = _cli(capsys, "--tracking-uri", store.uri, "--sweep", sweep, "--split", split)
    expected = _expected(_runs(store, sweep)).loc[("yeast", "2", "opt" if sweep == GRID else "parity")]
    assert code == 0 and f"{split} bpd" in out
    assert f"{expected[f'{split}_bpd_mean']:.3f} ± {expected[f'{split}_bpd_std']:.3f}" in out


def test_aggregate_csv_holds_every_split(store: Store, capsys: pytest.CaptureFixture) -> None:
    table = _csv(store, capsys, "--sweep", "valid")
    expected = _expected(_runs(store, "valid"))
    for split in ("train", "val", "test"):
        assert np.allclose(table[f"{split}_bpd_mean"], expected.loc[table.index, f"{split}_bpd_mean"], rtol=1e-12)
    paper = _csv(store, capsys, "--sweep", GRID)  # the paper's recipe: no validation rows, no values
    assert paper["val_bpd_mean"].isna().all() and paper["test_bpd_mean"].notna().all()


# --- cross-sweep, diverged -------------------------------------------------------------

def test_two_sweeps_combine_into_one_table(store: Store, capsys: pytest.CaptureFixture) -> None:
    code, out, err = _cli(capsys, "--tracking-uri", store.uri, "--sweep", GRID, "seed1", "--format", "csv")
    assert code == 0 and "2 sweeps" in err and "warning" not in err
    table = pd.read_csv(io.StringIO(out), dtype={"depth": str}).set_index(["dataset", "depth", "layout"])
    expected = _expected(_runs(store, GRID, "seed1"))
    cell = ("yeast", "2", "parity")
    assert table.loc[cell, "n"] == 2 * INSTANCES
    assert table.loc[cell, "test_bpd_mean"] == pytest.approx(expected.loc[cell, "test_bpd_mean"], rel=1e-12)
    assert table.loc[cell, "test_bpd_std"] == pytest.approx(expected.loc[cell, "test_bpd_std"], rel=1e-12)
    assert (table.drop(index=[cell])["n"] == INSTANCES).all()


def test_diverged_instances_are_counted_not_averaged(store: Store, capsys: pytest.CaptureFixture) -> None:
    alone = _runs(store, "diverge")
    assert len(alone) == INSTANCES and (alone["metrics.diverged"] == 1).all() and set(alone["status"]) == {"FAILED"}
    code, out, err = _cli(capsys, "--tracking-uri", store.uri, "--sweep", "diverge")
    assert code == 0 and f"all {INSTANCES} diverged" in out

    table = _csv(store, capsys, "--sweep", GRID, "diverge")
    grid = _runs(store, GRID)
    cell = ("yeast", "2", "parity")
    finite = grid[(grid["params.dataset"] == "yeast") & (grid["params.depth"] == "2")
                  & (grid["params.layout"] == "parity")]["metrics.test_bpd"]
    assert table.loc[cell, "n"] == 2 * INSTANCES and table.loc[cell, "n_diverged"] == INSTANCES
    assert table.loc[cell, "test_bpd_mean"] == pytest.approx(finite.mean(), rel=1e-12)
    assert np.isfinite(table["test_bpd_mean"]).all()

    code, out, err = _cli(capsys, "--tracking-uri", store.uri, "--sweep", GRID, "diverge")
    assert f"({INSTANCES} div.)" in out
    assert "warning" in err and "train.max_lr" in err  # the cell mixes two learning rates


def test_a_param_that_differs_between_sweeps_becomes_a_column(store: Store, capsys: pytest.CaptureFixture) -> None:
    code, out, err = _cli(capsys, "--tracking-uri", store.uri, "--sweep", GRID, "diverge", "--format", "markdown",
                          "--group-by", "dataset", "depth", "layout", "train.max_lr")
    assert code == 0 and "warning" not in err
    assert "parity / 0.01" in out and "parity / 10.0" in out and f"all {INSTANCES} diverged" in out


def test_latest_sweep(store: Store, capsys: pytest.CaptureFixture) -> None:
    code, out, err = _cli(capsys, "--tracking-uri", store.uri, "--sweep", "latest", "--format", "csv")
    assert code == 0 and "1 sweep" in err, err
    assert len(pd.read_csv(io.StringIO(out))) == 1  # the diverge sweep, logged last


# --- errors ----------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--experiment", "nope"], "unknown experiment 'nope'"),
    (["--sweep", "multirun/nope"], "unknown sweep id 'multirun/nope'"),
    (["--experiment", "empty"], "experiment 'empty' has no runs"),
    (["--group-by", "dataset", "dpth"], "no such param in the runs: 'dpth' (did you mean depth?)"),
    (["--sweep", GRID, "--split", "val"], "--split val: no run logged val_bpd"),
])
def test_errors_exit_non_zero_with_one_message(store: Store, capsys: pytest.CaptureFixture, args: list[str],
                                               message: str) -> None:
    client = MlflowClient(store.uri)
    if client.get_experiment_by_name("empty") is None:
        client.create_experiment("empty")
    code, out, err = _cli(capsys, "--tracking-uri", store.uri, *args)
    assert code == 2 and out == ""
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1 and message in errors[0]


def test_missing_store_exits_non_zero_from_the_command_line(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "multirun_analysis", "--tracking-uri", f"sqlite:///{tmp_path}/x.db"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert f"no MLflow store at {tmp_path}/x.db" in result.stderr
    assert not (tmp_path / "x.db").exists()


def _not_a_database(path: Path) -> None:
    path.write_text("hello\n" * 100)


def _another_apps_database(path: Path) -> None:
    import sqlite3

    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE notes (body TEXT)")


def _an_empty_database(path: Path) -> None:
    import sqlite3

    with sqlite3.connect(path) as connection:  # a SQLite file with no table left
        connection.execute("CREATE TABLE t (x)")
        connection.execute("DROP TABLE t")


@pytest.mark.parametrize("make, message", [
    (_not_a_database, "{path} is not a SQLite database"),
    (_another_apps_database, "{path} is a SQLite database of another application (tables ['notes']), not an "
                             "MLflow store"),
    (_an_empty_database, "no MLflow store at {path}: the database is empty"),
])
def test_a_file_that_is_not_an_mlflow_store_is_one_line_and_left_as_it_was(make, message, tmp_path: Path,
                                                                            capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "x.db"
    make(path)
    before = path.read_bytes()
    code, out, err = _cli(capsys, "--tracking-uri", f"sqlite:///{path}")
    assert code == 2 and out == "", err
    assert err.strip().splitlines() == [err.strip().splitlines()[0]] and "Traceback" not in err, err
    assert err.startswith("multirun_analysis: error: ") and message.format(path=path) in err, err
    assert path.read_bytes() == before, "the analysis changed the file (MLflow added its tables)"


# --- figures, summary run ----------------------------------------------------------------

def test_histories_match_mlflow_api(store: Store) -> None:
    client = MlflowClient(store.uri)
    runs = _runs(store, GRID)
    ids = list(runs["run_id"][:3])
    frame = metric_histories(client, ids, "batch_bpd")
    for run_id in ids:
        history = {m.step: m.value for m in client.get_metric_history(run_id, "batch_bpd")}
        assert frame[run_id].dropna().to_dict() == history


def test_figures_and_summary_run(store: Store, capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    code, _, err = _cli(capsys, "--tracking-uri", store.uri, "--sweep", GRID, "diverge", "--out", str(tmp_path),
                        "--log-to-mlflow")
    assert code == 0, err
    for dataset in DATASETS:
        for name in ("bpd", "batch_bpd", "search"):
            png = tmp_path / f"{name}_{dataset}.png"
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    assert {"aggregate.csv", "tables_test.md", "tables_test.tex", "tables_test.txt"} <= {p.name for p in tmp_path.iterdir()}

    client = MlflowClient(store.uri)
    experiment = client.get_experiment_by_name("flowsweep").experiment_id
    summaries = client.search_runs([experiment], f"tags.`{SUMMARY_TAG}` = 'true'")
    assert len(summaries) == 1 and summaries[0].info.status == "FINISHED"
    logged = {a.path for a in client.list_artifacts(summaries[0].info.run_id)}
    assert {"tables_test.md", "bpd_yeast.png", "search_sonar.png"} <= logged
    # Neither the summary run nor a job's parent run is read back as a model instance.
    table = _csv(store, capsys)
    assert table["n"].sum() == len(_runs(store, GRID, "seed1", "valid", "diverge"))


@pytest.mark.parametrize("fmt, magic", [("pdf", b"%PDF"), ("svg", b"<?xml")])
def test_figures_as_vectors_with_a_tick_at_each_depth(fmt: str, magic: bytes, store: Store,
                                                      capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    from multirun_analysis.aggregate import aggregate
    from multirun_analysis.figures import bpd_figure
    from multirun_analysis.load import load_runs
    from multirun_analysis.tables import build_tables

    code, _, err = _cli(capsys, "--tracking-uri", store.uri, "--sweep", GRID, "--out", str(tmp_path),
                        "--figure-format", fmt)
    assert code == 0, err
    for dataset in DATASETS:
        assert (tmp_path / f"bpd_{dataset}.{fmt}").read_bytes().startswith(magic)
        assert not (tmp_path / f"bpd_{dataset}.png").exists()
    runs = load_runs(store.uri, "flowsweep", [GRID]).frame
    table = build_tables(aggregate(runs), ["dataset", "depth", "layout"])[0]
    ax = bpd_figure(table).axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == list(DEPTHS)  # 2 and 4, nothing between
    assert all(f"(n = {INSTANCES})" in t.get_text() for t in ax.get_legend().get_texts())


def test_versus_compares_a_column_with_the_best_other_one(store: Store, capsys: pytest.CaptureFixture) -> None:
    code, out, err = _cli(capsys, "--tracking-uri", store.uri, "--sweep", GRID, "--versus", "opt", "--format", "markdown")
    assert code == 0 and "opt wins" in err
    expected = _expected(_runs(store, GRID))
    row = expected.loc[("yeast", "2")]
    best = row.drop("opt")["test_bpd_mean"].idxmin()
    gap = row.loc["opt", "test_bpd_mean"] - row.loc[best, "test_bpd_mean"]
    error = np.sqrt(row.loc["opt", "test_bpd_std"] ** 2 / INSTANCES + row.loc[best, "test_bpd_std"] ** 2 / INSTANCES)
    line = next(l for l in out.splitlines() if l.startswith("| yeast") and "|       2 |" in l)
    assert f"{best} {row.loc[best, 'test_bpd_mean']:.3f}" in line and f"{gap:.3f}" in line and f"{error:.3f}" in line
    code, _, err = _cli(capsys, "--tracking-uri", store.uri, "--sweep", GRID, "--versus", "nope")
    assert code == 2 and "--versus: no layout='nope'" in err
