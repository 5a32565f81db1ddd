"""How the batched engine's wall time grows with K, with d and with depth."""

from __future__ import annotations

from typing import Optional

import pandas as pd

from flowsweep.bench.workload import Workload, best_of, make_workload
from flowsweep.training import train

__all__ = ["time_training", "scaling_table"]

#: The axes of the scaling table: (axis, dataset, depth, K) per row.
_ROWS = (
    [("K", "magic", 8, k) for k in (1, 5, 20, 100)]
    + [("d", name, 8, 20) for name in ("magic", "sonar")]
    + [("depth", "magic", depth, 20) for depth in (2, 4, 6, 8)]
)


def time_training(work: Workload, steps: int, repeats: int) -> float:
    """Best wall seconds of ``repeats`` :func:`~flowsweep.training.train` calls of ``steps`` steps."""
    initial = work.initial_flow()
    train(work.fresh(initial), work.data.train, work.batch_size, work.recipe(5), work.generators())  # warm up
    seconds, _ = best_of(repeats, lambda: train(work.fresh(initial), work.data.train, work.batch_size,
                                                 work.recipe(steps), work.generators()))
    return seconds


def scaling_table(steps: int, repeats: int, data_dir: Optional[str] = None,
                  threads: Optional[int] = None, kernel: Optional[str] = None) -> pd.DataFrame:
    """One training run per row of :data:`_ROWS`: ms per step (all K models) and per model-step."""
    rows = []
    for axis, dataset, depth, k in _ROWS:
        work = make_workload(dataset, depth, k, data_dir=data_dir, threads=threads, kernel=kernel)
        seconds = time_training(work, steps, repeats)
        rows.append({
            "axis": axis, "dataset": dataset, "d": work.data.d, "batch": work.batch_size, "depth": depth, "K": k,
            "threads": work.threads, "kernel": work.cfg.train.kernel,
            "ms / step": round(1e3 * seconds / steps, 2),
            "ms / model-step": round(1e3 * seconds / steps / k, 3),
        })
    return pd.DataFrame(rows)
