"""Bad input, end to end: ``main.py`` (and ``python -m multirun_analysis``) exits non-zero
with one clear message naming the key or file, prints no traceback, leaves no FINISHED
MLflow run, and gives up within seconds.

One test per case. The cases run as subprocesses from a temporary directory with
``MLFLOW_TRACKING_URI`` unset; downloads go to a closed local port (``HTTPS_PROXY``),
so no case depends on the network. The subprocesses of the selected cases are started
together, two at a time, before the first test asserts (they are CPU-light and mostly
wait on imports); each test then checks its own case.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import pytest
from mlflow.tracking import MlflowClient

from .conftest import Flowsweep, all_runs, make_flowsweep, tiny
from .servers import free_port

YEAST = "yeast/yeast.data"


@dataclass(frozen=True)
class Case:
    """``args`` given to main.py; ``message`` must appear in stderr (``{root}`` = the case folder)."""

    args: tuple[str, ...]
    message: str
    code: int = 2
    #: Prepares the case folder (``root``) before the run, e.g. a corrupted copy of the data.
    setup: Optional[Callable[[Path, Path], None]] = None
    #: Runs without the privilege to read files regardless of their permissions.
    unprivileged: bool = False
    #: ``python -m multirun_analysis`` instead of ``main.py`` (whose tiny job is then not added).
    analysis: bool = False
    #: The case must be over within this many seconds (no retrying an unreachable store).
    within_s: float = 60.0


def _copy_yeast(root: Path, data_dir: Path) -> Path:
    target = root / "data" / YEAST
    target.parent.mkdir(parents=True)
    shutil.copy(data_dir / YEAST, target)
    return target


def _edit_line(index: int, edit: Callable[[list[str]], None]) -> Callable[[Path, Path], None]:
    """A setup that rewrites data line ``index`` (0-based) of a copy of yeast.data."""

    def setup(root: Path, data_dir: Path) -> None:
        path = _copy_yeast(root, data_dir)
        lines = path.read_text().splitlines(keepends=True)
        fields = lines[index].split()
        edit(fields)
        lines[index] = "  ".join(fields) + "\n"
        path.write_text("".join(lines))

    return setup


def _set(position: int, value: str) -> Callable[[list[str]], None]:
    return lambda fields: fields.__setitem__(position, value)


def _truncate(root: Path, data_dir: Path) -> None:
    path = _copy_yeast(root, data_dir)
    data = path.read_bytes()
    path.write_bytes(data[: data.index(b"\n", len(data) // 2) - 7])  # cut inside a line


def _unreadable_folder(root: Path, data_dir: Path) -> None:
    _copy_yeast(root, data_dir).parent.chmod(0)


def _unreadable_file(root: Path, data_dir: Path) -> None:
    _copy_yeast(root, data_dir).chmod(0)


def _csv(root: Path, data_dir: Path) -> None:
    (root / "table.csv").write_text("a,b,c\n" + "1.0,2.0,3.0\n" * 50)


def _csv_with_a_copied_column(root: Path, data_dir: Path) -> None:
    (root / "table.csv").write_text("a,b,c\n" + "".join(f"{i}.5,{i % 7}.25,{i}.5\n" for i in range(50)))


def _a_file(root: Path, data_dir: Path) -> None:
    (root / "afile").write_text("not a folder")


def _deleted_experiment(root: Path, data_dir: Path) -> None:
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    client.delete_experiment(client.create_experiment("gone"))


def _read_only_folder(root: Path, data_dir: Path) -> None:
    (root / "results").mkdir()
    (root / "results").chmod(0o555)


CLOSED_PORT = free_port()
DATA = "data_dir={root}/data"

CASES: dict[str, Case] = {
    # Unknown options, wrong types (Hydra's composition, exit 1).
    "dataset=nope": Case(("dataset=nope",), "Could not find 'dataset/nope'", code=1),
    "layout=nope": Case(("layout=nope",), "Could not find 'layout/nope'", code=1),
    "search=nope": Case(("search=nope",), "Could not find 'search/nope'", code=1),
    "depth=abc": Case(("depth=abc",), "Could not find 'depth/abc'", code=1),
    "instances=abc": Case(("instances=abc",), "Value 'abc' of type 'str' could not be converted to Integer\n"
                                              "    full_key: instances", code=1),
    # Impossible values (flowsweep's checks, exit 2).
    "depth=0": Case(("depth=0",), "flowsweep: error: depth.layers: must be >= 1, got 0"),
    "instances=0": Case(("instances=0",), "flowsweep: error: instances: must be >= 1, got 0"),
    "train.steps=-1": Case(("train.steps=-1",), "flowsweep: error: train.steps: must be >= 1, got -1"),
    "batch_size>n_train": Case(("dataset.batch_size=5000",),
                               "flowsweep: error: dataset.batch_size: 5000 is larger than the training split (1202 rows)"),
    "m>=d": Case(("model.m=8",), "flowsweep: error: model.m: must be in 1..d-1 = 1..7, got 8"),
    "seed=-1": Case(("seed=-1",), "flowsweep: error: seed: must be >= 0, got -1"),
    "split_seed=-1": Case(("dataset.split_seed=-1",), "flowsweep: error: dataset.split_seed: must be >= 0, got -1"),
    "depth=-3": Case(("depth=-3",), "flowsweep: error: depth.layers: must be >= 1, got -3"),
    "depth=2.5": Case(("depth=2.5",), "Value '2.5' of type 'float' could not be converted to Integer\n"
                                      "    full_key: depth.layers", code=1),
    "every instance diverges (learning rate)": Case(
        ("train.max_lr=1e9",), "flowsweep: error: train.max_lr: all 2 instances diverged (non-finite loss or "
                               "parameters) at train.max_lr=1e+09, depth 2; the job's runs end FAILED."),
    # The defaults start every conditioner at zero (the flow is the identity), and depth 100
    # trains; with nn.Linear's initialisation the scales of 100 layers compound and it cannot.
    "every instance diverges (depth)": Case(
        ("depth=100", "model.init=uniform", "train.optimizer=sgd", "train.schedule=cyclic", "train.max_lr=1e-3"),
        "flowsweep: error: train.max_lr: all 2 instances diverged (non-finite loss or parameters) at "
        "train.max_lr=0.001, depth 100"),
    # Data files.
    "data_dir missing": Case(("data_dir={root}/nowhere",),
                             "flowsweep: error: yeast.data not found in {root}/nowhere/yeast/ nor in the cache"),
    "data_dir unreadable": Case((DATA,), "flowsweep: error: {root}/data/yeast/yeast.data: cannot access it "
                                         "(Permission denied)", setup=_unreadable_folder, unprivileged=True),
    "file unreadable": Case((DATA,), "flowsweep: error: {root}/data/yeast/yeast.data: cannot read it (Permission denied)",
                            setup=_unreadable_file, unprivileged=True),
    "non-numeric cell": Case((DATA,), "flowsweep: error: {root}/data/yeast/yeast.data: line 10, column 'mcg': "
                                      "'x.40' is not a number", setup=_edit_line(9, _set(1, "x.40"))),
    "NaN": Case((DATA,), "flowsweep: error: {root}/data/yeast/yeast.data: line 10, column 'alm': 'nan' is not a "
                         "finite number", setup=_edit_line(9, _set(3, "nan"))),
    "wrong column count": Case((DATA,), "flowsweep: error: {root}/data/yeast/yeast.data: line 10 has 9 fields, "
                                        "expected 10", setup=_edit_line(9, lambda f: f.pop(3))),
    "truncated": Case((DATA,), "flowsweep: error: {root}/data/yeast/yeast.data: 743 data rows, expected 1484; the "
                               "file is truncated", setup=_truncate),
    "csv without the named columns": Case(
        ("dataset=csv", "dataset.path={root}/table.csv", "dataset.batch_size=8", "dataset.columns=[a,x]"),
        "flowsweep: error: {root}/table.csv has no column(s) ['x'] (asked for by dataset.columns)", setup=_csv),
    "csv with a copied column": Case(
        ("dataset=csv", "dataset.path={root}/table.csv", "dataset.batch_size=8"),
        "flowsweep: error: {root}/table.csv: columns 'a' and 'c' hold the same value in every row",
        setup=_csv_with_a_copied_column),
    # Tracking.
    "unreachable tracking URI": Case((f"tracking.uri=http://127.0.0.1:{CLOSED_PORT}",),
                                     f"flowsweep: error: tracking.uri: cannot reach the MLflow server at "
                                     f"http://127.0.0.1:{CLOSED_PORT}", within_s=30),
    "unreachable PostgreSQL": Case((f"tracking.uri=postgresql://flowsweep:secret@127.0.0.1:{CLOSED_PORT}/mlflow",),
                                   f"flowsweep: error: tracking.uri: cannot reach the database server "
                                   f"127.0.0.1:{CLOSED_PORT} of postgresql://flowsweep:***@127.0.0.1:{CLOSED_PORT}"
                                   f"/mlflow: Connection refused", within_s=30),
    "file store": Case(("tracking.uri=file:{root}/mlruns",),
                       "flowsweep: error: tracking.uri: cannot use the MLflow store at file:{root}/mlruns: The "
                       "filesystem tracking backend (e.g., './mlruns') is in maintenance mode"),
    "sqlite below a file": Case(("tracking.uri=sqlite:///{root}/afile/mlflow.db",),
                                "flowsweep: error: tracking.uri: cannot use the MLflow store at "
                                "sqlite:///{root}/afile/mlflow.db: {root}/afile is a file, not a folder", setup=_a_file),
    "empty experiment name": Case(("tracking.experiment=''",),
                                  "flowsweep: error: tracking.experiment: must be a non-empty experiment name"),
    "deleted experiment": Case(("tracking.experiment=gone",),
                               "flowsweep: error: tracking.experiment: experiment 'gone' is deleted in "
                               "sqlite:///{root}/mlflow.db; restore it (mlflow experiments restore --experiment-id 1)",
                               setup=_deleted_experiment, within_s=30),
    # The analysis.
    "analysis --out read-only": Case(("--out", "{root}/results/tables"),
                                     "multirun_analysis: error: --out: cannot write to {root}/results/tables: "
                                     "Permission denied", setup=_read_only_folder, unprivileged=True, analysis=True),
    "analysis --precision -1": Case(("--precision", "-1"), "error: argument --precision: must be >= 0, got -1",
                                    analysis=True),
}


def _unprivileged_prefix() -> list[str]:
    """Run as root without the capability to ignore file permissions; nothing to do for other users."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root and util-linux's setpriv is missing: cannot make a file unreadable to root")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--"]


def _run(name: str, root: Path, data_dir: Path) -> tuple[subprocess.CompletedProcess, Flowsweep]:
    case = CASES[name]
    root.mkdir(parents=True)
    if case.setup:
        case.setup(root, data_dir)
    app = make_flowsweep(root, data_dir)
    app.env["HTTPS_PROXY"] = f"http://127.0.0.1:{CLOSED_PORT}"  # a download attempt fails at once, offline
    args = [a.format(root=root) for a in case.args]
    prefix = _unprivileged_prefix() if case.unprivileged else []
    command = [sys.executable, "-m", "multirun_analysis", *args] if case.analysis else app.command(*tiny(*args))
    started = time.monotonic()
    done = subprocess.run([*prefix, *command], cwd=root, env=app.env, capture_output=True, text=True, timeout=240)
    done.seconds = time.monotonic() - started  # type: ignore[attr-defined]
    return done, app


@pytest.fixture(scope="module")
def outcomes(request, tmp_path_factory, data_dir) -> dict[str, tuple[subprocess.CompletedProcess, Flowsweep]]:
    """The runs of every selected case, two at a time."""
    selected = [item.callspec.params["name"] for item in request.session.items
                if item.module is request.module and hasattr(item, "callspec")]
    base = tmp_path_factory.mktemp("bad-input")
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(_run, name, base / f"case{i}", data_dir) for i, name in enumerate(selected)}
        return {name: future.result() for name, future in futures.items()}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_fails_with_one_clear_message_and_no_finished_run(name, outcomes):
    done, app = outcomes[name]
    expected = CASES[name].message.format(root=app.cwd)
    assert done.returncode == CASES[name].code, done.stderr
    assert expected in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert done.seconds < CASES[name].within_s, f"took {done.seconds:.0f} s"
    if expected.startswith(("flowsweep: error:", "multirun_analysis: error:")):
        # One message, and it is the last thing the user sees.
        assert done.stderr.count(" error: ") == 1, done.stderr
        assert done.stderr.rstrip().splitlines()[-1].startswith(expected), done.stderr
    if (app.cwd / "mlflow.db").exists():
        for experiment in ("flowsweep", "gone"):
            assert [r for r in all_runs(app.default_uri, experiment) if r.info.status == "FINISHED"] == []
