"""Per-step metric histories of many runs (``batch_bpd``, ``search_best_bpd``) and their cell means.

A history frame has one row per step and one column per run id. Non-finite values
(a diverged minibatch; ``inf`` read back from sqlite as ~1.8e308) become NaN, so means
over instances skip them instead of turning infinite.

Histories are read with MLflow's public ``MlflowClient.get_metric_history``, run by run
(about 10 µs per point on a local sqlite store: seconds for the paper's grid of 960 runs
× 1250 steps), so any store and any MLflow release that keeps its client API works.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from multirun_analysis.load import DIVERGED_ABOVE

__all__ = ["metric_histories", "cell_means"]

_COLUMNS = ["run_id", "step", "timestamp", "value"]


def _read(client: MlflowClient, run_ids: Sequence[str], key: str) -> pd.DataFrame:
    rows = [(run_id, m.step, m.timestamp, m.value) for run_id in run_ids for m in client.get_metric_history(run_id, key)]
    return pd.DataFrame(rows, columns=_COLUMNS)


def metric_histories(client: MlflowClient, run_ids: Sequence[str], key: str) -> pd.DataFrame:
    """``[steps, runs]`` frame of metric ``key`` (index: step, columns: ``run_ids`` in order).

    Steps a run did not log, and non-finite values, are NaN; a run without the metric is
    an all-NaN column.
    """
    run_ids = list(run_ids)
    rows = _read(client, run_ids, key)
    # A step logged twice (a resumed run) keeps its latest value.
    rows = rows.sort_values("timestamp", kind="stable").drop_duplicates(["run_id", "step"], keep="last")
    frame = rows.pivot(index="step", columns="run_id", values="value").reindex(columns=run_ids)
    frame = frame.sort_index().astype(float)
    frame.columns.name = None
    return frame.where(np.isfinite(frame) & (frame.abs() <= DIVERGED_ABOVE))


def cell_means(histories: pd.DataFrame, groups: pd.DataFrame) -> pd.DataFrame:
    """Mean over the runs of each cell, step by step (NaNs skipped).

    Arguments:
        histories: ``[steps, runs]`` from :func:`metric_histories`.
        groups: One row per run id (index) with the group-by keys as columns.

    Returns:
        ``[steps, cells]`` with one column level per group-by key.
    """
    keys = list(groups.columns)
    by_run = histories.T
    labels = groups.loc[by_run.index, keys]
    means = by_run.groupby([labels[k] for k in keys], sort=False).mean().T
    if not isinstance(means.columns, pd.MultiIndex):
        means.columns = pd.MultiIndex.from_arrays([means.columns], names=keys)
    return means
