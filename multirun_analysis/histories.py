"""Per-step metric histories of many runs (``batch_bpd``, ``search_best_bpd``) and their cell means.

A history frame has one row per step and one column per run id. Non-finite values
(a diverged minibatch; ``inf`` read back from sqlite as ~1.8e308) become NaN, so means
over instances skip them instead of turning infinite.

Reading is the slow part of the analysis (the paper grid logs 960 runs × 1250 steps).
``MlflowClient.get_metric_history`` and the store's bulk reads build one entity object
per value, about 50 µs each on sqlite (a minute for the paper grid), so on a SQL store
the values are selected straight into pandas through MLflow's own SQLAlchemy model of
the metrics table (seconds); any other store (an HTTP server) is read run by run with
``get_metric_history``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from mlflow.store.tracking.dbmodels.models import SqlMetric
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
from mlflow.tracking import MlflowClient
from sqlalchemy import select

from multirun_analysis.load import DIVERGED_ABOVE

__all__ = ["metric_histories", "cell_means"]

#: Runs per query: well under SQLite's limit on bound parameters.
_CHUNK = 500
_COLUMNS = ["run_id", "step", "timestamp", "value"]


def _read_sql(store: SqlAlchemyStore, run_ids: Sequence[str], key: str) -> pd.DataFrame:
    parts = []
    for start in range(0, len(run_ids), _CHUNK):
        query = (select(SqlMetric.run_uuid.label("run_id"), SqlMetric.step, SqlMetric.timestamp,
                        SqlMetric.value, SqlMetric.is_nan)
                 .where(SqlMetric.key == key, SqlMetric.run_uuid.in_(run_ids[start:start + _CHUNK])))
        part = pd.read_sql(query, store.engine)
        part.loc[part["is_nan"].astype(bool), "value"] = np.nan
        parts.append(part[_COLUMNS])
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=_COLUMNS)


def _read_client(client: MlflowClient, run_ids: Sequence[str], key: str) -> pd.DataFrame:
    rows = [(run_id, m.step, m.timestamp, m.value) for run_id in run_ids for m in client.get_metric_history(run_id, key)]
    return pd.DataFrame(rows, columns=_COLUMNS)


def metric_histories(client: MlflowClient, run_ids: Sequence[str], key: str) -> pd.DataFrame:
    """``[steps, runs]`` frame of metric ``key`` (index: step, columns: ``run_ids`` in order).

    Steps a run did not log, and non-finite values, are NaN; a run without the metric is
    an all-NaN column.
    """
    run_ids = list(run_ids)
    # Private attribute, looked up defensively: only the SQL store has the fast path.
    store = getattr(getattr(client, "_tracking_client", None), "store", None)
    if isinstance(store, SqlAlchemyStore):
        rows = _read_sql(store, run_ids, key)
    else:
        rows = _read_client(client, run_ids, key)
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
