"""How much of the oracle's gain over parity a layout recovers, and how many planted edges it covers.

For datasets with planted dependencies (``dataset=synthetic_*``), a cell's *recovered
share* on a split is ``(parity − x) / (parity − oracle)`` of the mean bpd, where
``parity`` and ``oracle`` are the cells that differ from the cell only in ``layout``:
100 % is as good as the oracle, 0 % no better than parity, below 0 worse than parity.
It is computed only where both partners exist (``layout`` among the group-by keys and
runs of ``layout=parity`` and ``layout=oracle``) and left out (NaN) where parity and
oracle have the same mean. The *mean dependency recall* of a cell is the mean of its
runs' ``dependency_recall`` metric over every instance (a property of the structure, so
diverged instances count).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

__all__ = ["REFERENCE", "RECALL", "share_column", "add_recovery"]

#: The two layouts whose gap the share measures: (baseline, target).
REFERENCE = ("parity", "oracle")
#: The aggregate's column of mean dependency recall.
RECALL = "dependency_recall_mean"


def share_column(split: str) -> str:
    """The aggregate's column of recovered shares on ``split``."""
    return f"{split}_recovered_share"


def add_recovery(agg: pd.DataFrame, group_by: Sequence[str], splits: Sequence[str]) -> pd.DataFrame:
    """``agg`` (one row per cell, ``{split}_bpd_mean`` columns) with a :func:`share_column` per
    split, added only when some cell has both a parity and an oracle partner."""
    keys = list(group_by)
    if "layout" not in keys or not set(REFERENCE) <= set(agg["layout"]):
        return agg
    others = [k for k in keys if k != "layout"]
    out = agg.copy()
    # A constant join key, so that grouping by layout alone still finds the partners.
    frame = out[others].assign(_all="")
    on = [*others, "_all"]
    for split in splits:
        mean = f"{split}_bpd_mean"
        partners = frame.copy()
        for layout in REFERENCE:
            ref = out.loc[out["layout"] == layout, others].assign(_all="", **{layout: out.loc[out["layout"] == layout, mean]})
            partners = partners.merge(ref, how="left", on=on)
        gap = (partners["parity"] - partners["oracle"]).to_numpy()
        gain = (partners["parity"] - out[mean].reset_index(drop=True)).to_numpy()
        with np.errstate(divide="ignore", invalid="ignore"):
            share = np.where(gap != 0, gain / gap, np.nan)
        out[share_column(split)] = share
    return out
