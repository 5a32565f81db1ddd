"""The wall time of a whole ``python main.py ...`` run and where it goes.

The job runs as a subprocess in a fresh temporary folder (its own ``mlflow.db``, its own
Hydra ``outputs/``), so the figure includes interpreter start-up, imports and creating
the MLflow store, as a user's first run would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

from flowsweep.bench.phases import LOGGING, PHASES, TIMINGS_ENV, WRITER_CPU

__all__ = ["TRAINING", "time_job", "non_training_share"]

#: The phases that train models; everything else of the wall is overhead a user waits for.
TRAINING = ("structure search", "final training")


def time_job(overrides: Sequence[str], keep: Optional[str] = None) -> tuple[pd.DataFrame, float]:
    """Run ``main.py`` with ``overrides``; returns the phase table and the wall seconds.

    A job that fails exits this process with its exit status (SystemExit), after its own message.

    Arguments:
        keep: Folder to run in and keep (default: a temporary folder, removed afterwards).
    """
    folder = Path(keep or tempfile.mkdtemp(prefix="flowsweep-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    timings = folder / "phase_timings.json"
    env = {**os.environ, TIMINGS_ENV: str(timings)}
    env.pop("MLFLOW_TRACKING_URI", None)  # the job's store is <folder>/mlflow.db
    try:
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "flowsweep.bench.phases", *overrides], cwd=folder, env=env)
        if done.returncode:  # bad input: the job printed its one line (stderr is shared); nothing to time
            raise SystemExit(done.returncode)
        wall = time.perf_counter() - start
        seconds = json.loads(timings.read_text())
    finally:
        if keep is None:
            shutil.rmtree(folder, ignore_errors=True)
    rows = [(phase, seconds.get(phase, 0.0)) for phase in PHASES]
    rows.append(("other: start-up, imports, Hydra", wall - sum(s for _, s in rows)))
    rows.append(("logging in all (mlflow + figures)", sum(seconds.get(phase, 0.0) for phase in LOGGING)))
    rows.append((WRITER_CPU, seconds.get(WRITER_CPU, 0.0)))
    table = pd.DataFrame(rows, columns=["phase", "wall s"])
    table["share"] = (table["wall s"] / wall).map(lambda x: f"{100 * x:.1f} %")
    table.loc[table["phase"] == WRITER_CPU, "share"] = ""  # CPU time beside the job, not a share of its wall
    table["wall s"] = table["wall s"].round(2)
    return table, wall


def non_training_share(table: pd.DataFrame, wall: float) -> float:
    """The share of ``wall`` not spent in :data:`TRAINING` (start-up, data, evaluation, logging, figures)."""
    return 1 - float(table.loc[table["phase"].isin(TRAINING), "wall s"].sum()) / wall
