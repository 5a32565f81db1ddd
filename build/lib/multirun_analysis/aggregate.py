"""Aggregate model instances into cells: mean ± std of train/validation/test bpd per group of params.

A cell is one combination of the ``group_by`` params (default dataset × depth × layout;
``tags.<name>`` groups by a tag, e.g. ``tags.sweep_id``). Runs of several sweeps fall into
the same cell when their ``group_by`` params match.
Diverged instances are counted (``n_diverged``) and left out of mean and std, which are
over the remaining finite instances (std with ``ddof=1``; NaN when fewer than two).
"""

from __future__ import annotations

import difflib
from typing import Iterable, Optional, Sequence

import pandas as pd

from multirun_analysis.load import AnalysisError
from multirun_analysis.recovery import RECALL, add_recovery

__all__ = [
    "DEFAULT_GROUP_BY",
    "LAYOUT_ORDER",
    "SPLITS",
    "UNSET",
    "group_frame",
    "split_keys",
    "ordered_values",
    "aggregate",
    "mixed_params",
]

DEFAULT_GROUP_BY = ("dataset", "depth", "layout")
#: Column order of the paper's tables, then a given structure and the oracle (a reference);
#: other layouts follow alphabetically.
LAYOUT_ORDER = ("parity", "random", "opt", "file", "oracle")
SPLITS = ("train", "val", "test")
#: Splits every flowsweep instance logs (``val_bpd`` only where the job had validation rows).
_REQUIRED_SPLITS = ("train", "test")
#: Shown for a group param some runs did not log.
UNSET = "(unset)"
#: Params that differ between the instances of one cell by design, or that do not change
#: numbers (like flowsweep.app.run.fingerprint's volatile keys): not a reason to warn.
_PER_INSTANCE = {"instance", "instance_seed", "instances", "seed", "progress", "data_dir", "rerun"}


def _column(key: str) -> str:
    return key if key.startswith("tags.") else f"params.{key}"


def group_frame(runs: pd.DataFrame, group_by: Sequence[str]) -> pd.DataFrame:
    """The ``group_by`` params (or ``tags.*``) of every run as string columns named after the keys."""
    missing = [key for key in group_by if _column(key) not in runs.columns]
    if missing:
        known = sorted(c[len("params."):] for c in runs.columns if c.startswith("params."))
        hints = {key: difflib.get_close_matches(key, known, n=3) for key in missing}
        text = "; ".join(f"{k!r}" + (f" (did you mean {', '.join(h)}?)" if h else "") for k, h in hints.items())
        raise AnalysisError(f"--group-by: no such param in the runs: {text}")
    return pd.DataFrame({key: runs[_column(key)].fillna(UNSET).astype(str) for key in group_by},
                        index=runs.index)


def split_keys(group_by: Sequence[str]) -> tuple[Optional[str], str, list[str]]:
    """``(table key, row key, column keys)``: the first key splits tables (when there are
    two or more), the next gives the rows, the rest the columns."""
    keys = list(group_by)
    if not keys:
        raise AnalysisError("--group-by needs at least one param")
    table_key = keys[0] if len(keys) > 1 else None
    return table_key, keys[1 if table_key else 0], keys[2:]


def _rank(key: str, value: str) -> tuple:
    if key == "layout" and value in LAYOUT_ORDER:
        return (0, LAYOUT_ORDER.index(value), "")
    try:
        return (1, float(value), value)
    except ValueError:
        return (2, 0.0, value)


def ordered_values(key: str, values: Iterable[str]) -> list[str]:
    """Distinct values in table order: the paper's layout order, numbers numerically, text alphabetically."""
    return sorted(set(values), key=lambda v: _rank(key, v))


def _sorted(frame: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    positions = {k: {v: i for i, v in enumerate(ordered_values(k, frame[k]))} for k in keys}
    order = pd.DataFrame({k: frame[k].map(positions[k]) for k in keys}).sort_values(list(keys)).index
    return frame.loc[order].reset_index(drop=True)


def aggregate(runs: pd.DataFrame, group_by: Sequence[str] = DEFAULT_GROUP_BY) -> pd.DataFrame:
    """Long form: one row per cell with the group params, ``n``, ``n_diverged`` and
    ``{train,val,test}_bpd_{mean,std}`` over the non-diverged instances (``val``: NaN for runs
    without validation rows); for runs that logged ``dependency_recall``, its mean, and where
    parity and oracle cells exist, each cell's ``{train,val,test}_recovered_share``
    (:mod:`multirun_analysis.recovery`)."""
    keys = list(group_by)
    split_keys(keys)
    for split in _REQUIRED_SPLITS:
        if f"metrics.{split}_bpd" not in runs.columns:
            raise AnalysisError(f"the runs have no {split}_bpd metric: are they flowsweep runs?")
    data = group_frame(runs, keys)
    stats: dict[str, tuple[str, str]] = dict(n=("diverged", "size"), n_diverged=("diverged", "sum"))
    for split in SPLITS:
        column = f"metrics.{split}_bpd"
        logged = runs[column].astype(float) if column in runs.columns else pd.Series(float("nan"), index=runs.index)
        data[split] = logged.where(~runs["diverged"])
        stats[f"{split}_bpd_mean"] = (split, "mean")
        stats[f"{split}_bpd_std"] = (split, "std")
    data["diverged"] = runs["diverged"].astype(int)
    if "metrics.dependency_recall" in runs.columns:  # runs on data with planted dependencies
        data["recall"] = runs["metrics.dependency_recall"].astype(float)
        stats[RECALL] = ("recall", "mean")
    out = data.groupby(keys, sort=False).agg(**stats).reset_index()
    return add_recovery(_sorted(out, keys), keys, SPLITS)


def mixed_params(runs: pd.DataFrame, group_by: Sequence[str]) -> list[str]:
    """Params (other than per-instance ones) whose value differs between runs of one cell.

    Non-empty typically when sweeps with different settings are combined: add the params
    to ``--group-by`` to separate them. ``search.*`` is ignored for runs that did not
    search (``search=none``), which log the unused search config too.
    """
    keys = list(group_by)
    names = [c[len("params."):] for c in runs.columns if c.startswith("params.")]
    names = [n for n in names if n not in keys and n not in _PER_INSTANCE and not n.startswith("tracking.")]
    if not names or not len(runs):
        return []
    groups = group_frame(runs, keys)
    values = runs[[f"params.{n}" for n in names]].fillna(UNSET).astype(str)
    if "params.search" in runs.columns:
        unused = (runs["params.search"] == "none").to_numpy()
        for name in names:
            if name.startswith("search."):
                values.loc[unused, f"params.{name}"] = None
    counts = values.groupby([groups[k] for k in keys]).nunique().max()
    return sorted(c[len("params."):] for c in counts.index[counts > 1])
