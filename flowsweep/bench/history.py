"""Before and after: the training loop of an earlier commit against the current one.

The earlier commit's ``flowsweep/engine.py`` and ``flowsweep/training.py`` (and
``fused.py`` where it exists) are read with ``git show`` into a throw-away package and
timed in the same process as the current ones, the variants taking turns, so that
both see the same load. Needs the repository's git history.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Callable

import pandas as pd
import torch

from flowsweep import training
from flowsweep.bench.workload import Workload

__all__ = ["engine_at", "before_after"]

_REPO = Path(__file__).resolve().parents[2]
_MODULES = ("fused", "engine", "training")


def engine_at(rev: str) -> tuple[ModuleType, ModuleType]:
    """``(engine, training)`` modules of commit ``rev``, importable side by side with the current ones."""
    package = "flowsweep_at_" + re.sub(r"\W", "_", rev)
    folder = Path(tempfile.mkdtemp(prefix="flowsweep-history-")) / package
    folder.mkdir()
    (folder / "__init__.py").write_text("")
    for name in _MODULES:
        shown = subprocess.run(["git", "show", f"{rev}:flowsweep/{name}.py"], cwd=_REPO, capture_output=True, text=True)
        if shown.returncode == 0:  # fused.py is newer than the first engine
            source = re.sub(rf"\bflowsweep\.({'|'.join(_MODULES)})\b", rf"{package}.\1", shown.stdout)
            (folder / f"{name}.py").write_text(source)
    sys.path.insert(0, str(folder.parent))
    return importlib.import_module(f"{package}.engine"), importlib.import_module(f"{package}.training")


def _run(engine: ModuleType, train_module: ModuleType, work: Workload, steps: int, threads: int) -> float:
    """Wall seconds of one ``train`` call of ``steps`` steps."""
    flow = engine.BatchedCouplingFlow(work.structures, work.generators())
    base = work.schedule(steps)
    fields = dict(steps=steps, base_lr=base.base_lr, max_lr=base.max_lr, step_size_up=base.step_size_up,
                  mode=base.mode, momentum=base.momentum)
    if "threads" in train_module.Schedule.__dataclass_fields__:
        fields["threads"] = threads
    torch.set_num_threads(threads)
    start = time.perf_counter()
    train_module.train(flow, work.data.train, work.batch_size, train_module.Schedule(**fields), work.generators())
    return time.perf_counter() - start


def before_after(rev: str, work: Workload, steps: int, repeats: int) -> pd.DataFrame:
    """ms per step (all K models) of ``rev``'s loop and of the current one, each with torch's
    default threads (one per core) and with one thread; best of ``repeats`` rounds."""
    old_engine, old_training = engine_at(rev)
    current = importlib.import_module("flowsweep.engine")
    cores = os.cpu_count() or 1
    variants: dict[str, Callable[[], float]] = {}
    for name, engine, loop in ((rev, old_engine, old_training), ("current", current, training)):
        variants[f"{name}, {cores} threads (torch's default)"] = lambda e=engine, t=loop: _run(e, t, work, steps, cores)
        variants[f"{name}, 1 thread"] = lambda e=engine, t=loop: _run(e, t, work, steps, 1)
    best = {name: float("inf") for name in variants}
    for _ in range(repeats):
        for name, run in variants.items():
            best[name] = min(best[name], run())
    torch.set_num_threads(1)
    rows = [{"training loop": name, "ms / step": round(1e3 * s / steps, 1),
             "ms / model-step": round(1e3 * s / steps / work.k, 3)} for name, s in best.items()]
    return pd.DataFrame(rows)
