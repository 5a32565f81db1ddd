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


def _read_only_store(root: Path, data_dir: Path) -> None:
    MlflowClient(f"sqlite:///{root / 'mlflow.db'}").search_experiments()  # MLflow's schema
    (root / "mlflow.db").chmod(0o444)


def _read_only_folder(root: Path, data_dir: Path) -> None:
    (root / "results").mkdir()
    (root / "results").chmod(0o555)


CLOSED_PORT = free_port()
DATA = "data_dir={root}/data"

CASES: dict[str, Case] = {
    # The rest of the promise runs in-process: test_cases.py. Here, what needs a process of its own
    # (exit codes of main.py itself, files unreadable to an unprivileged process, a real timeout).
    "dataset=nope": Case(("dataset=nope",), "flowsweep: error: dataset: no option 'nope' in conf/dataset/; choose from"),
    "depth=0": Case(("depth=0",), "flowsweep: error: depth.layers: must be >= 1, got 0"),
    "every instance diverges (depth)": Case(
        ("depth=100", "model.init=uniform", "train.optimizer=sgd", "train.schedule=cyclic", "train.max_lr=1e-3"),
        "flowsweep: error: train.max_lr: all 2 instances diverged (non-finite loss or parameters) at "
        "train.max_lr=0.001, depth 100"),
    "data_dir unreadable": Case((DATA,), "flowsweep: error: {root}/data/yeast/yeast.data: cannot access it "
                                         "(Permission denied)", setup=_unreadable_folder, unprivileged=True),
    "file unreadable": Case((DATA,), "flowsweep: error: {root}/data/yeast/yeast.data: cannot read it (Permission denied)",
                            setup=_unreadable_file, unprivileged=True),
    "unreachable tracking URI": Case((f"tracking.uri=http://127.0.0.1:{CLOSED_PORT}",),
                                     f"flowsweep: error: tracking.uri: cannot reach the MLflow server at "
                                     f"http://127.0.0.1:{CLOSED_PORT}", within_s=30),
    "read-only store, rerun=true": Case(("rerun=true",), "flowsweep: error: tracking.uri: cannot use the MLflow "
                                        "store at sqlite:///{root}/mlflow.db: {root}/mlflow.db is read-only (a job "
                                        "writes its runs there)", setup=_read_only_store, unprivileged=True,
                                        within_s=30),
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
