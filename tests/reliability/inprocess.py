"""``main.py`` run in this process: the real Hydra composition, the real task and job entry
points with their real error handling, a real sqlite store in the case's folder.

A subprocess costs 3-4 s of imports per case; in-process a case that fails its checks costs
a tenth of a second, so the bad-input table can hold hundreds. :func:`run_main` calls
``main.cli`` (the function ``python main.py`` runs) from the case folder with the
environment a user has, and restores the process afterwards (environment, working
directory, MLflow writer processes).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Iterator

REPO = Path(__file__).resolve().parents[2]

__all__ = ["Outcome", "run_main", "main_module"]

_main: ModuleType | None = None


def main_module() -> ModuleType:
    """``main.py`` imported once (as ``flowsweep_main``: ``main`` would shadow nothing, but says less)."""
    global _main
    if _main is None:
        spec = importlib.util.spec_from_file_location("flowsweep_main", REPO / "main.py")
        assert spec is not None and spec.loader is not None
        _main = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(_main)
    return _main


@dataclass
class Outcome:
    """What a user sees: the exit status, stdout, stderr, and how long it took."""

    code: int
    stdout: str
    stderr: str
    seconds: float


@contextlib.contextmanager
def _restored(cwd: Path, env: dict[str, str]) -> Iterator[None]:
    before_env, before_cwd = dict(os.environ), os.getcwd()
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    try:
        yield
    finally:
        os.chdir(before_cwd)
        os.environ.clear()
        os.environ.update(before_env)
        from flowsweep.record import mlflow_writer

        mlflow_writer.close_writers()  # a case's writer process must not outlive it


def run_main(args: list[str], cwd: Path, env: dict[str, str]) -> Outcome:
    """``python main.py *args`` from ``cwd`` with environment ``env``, in this process."""
    main = main_module()
    out, err = io.StringIO(), io.StringIO()
    started = time.monotonic()
    with _restored(cwd, env), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main.cli(list(args))
    return Outcome(code, out.getvalue(), err.getvalue(), time.monotonic() - started)
