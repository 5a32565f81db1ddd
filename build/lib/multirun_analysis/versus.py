"""One column against the best of the others, row by row, with the noise of both.

``python -m multirun_analysis --versus opt`` compares, in every row of every table, the
chosen column (a layout, say) with the best of the other columns of that row (the lowest
mean bpd): the difference of the means, its standard error ``sqrt(s1²/n1 + s2²/n2)`` over
the non-diverged instances, ``z`` = difference / standard error, and a verdict — ``wins``
or ``loses`` where ``|z| > 2``, ``ties`` otherwise.
"""

from __future__ import annotations

import math
from typing import Sequence

import pandas as pd

from multirun_analysis.aggregate import split_keys
from multirun_analysis.load import AnalysisError

__all__ = ["versus"]

#: |z| beyond which a difference counts.
_SIGNIFICANT = 2.0


def versus(agg: pd.DataFrame, group_by: Sequence[str], column: str, split: str = "test") -> pd.DataFrame:
    """Per table and row: ``column``'s mean bpd against the best other column's (see the module)."""
    table_key, row_key, column_keys = split_keys(group_by)
    if len(column_keys) != 1:
        raise AnalysisError("--versus needs exactly one column param (e.g. --group-by dataset depth layout)")
    key = column_keys[0]
    if column not in set(agg[key]):
        raise AnalysisError(f"--versus: no {key}={column!r} in the runs; there are {sorted(set(agg[key]))}")
    mean, std = f"{split}_bpd_mean", f"{split}_bpd_std"
    converged = agg.assign(n_ok=agg["n"] - agg["n_diverged"])
    rows = []
    for where, part in converged.groupby([k for k in (table_key, row_key) if k], sort=False):
        where = where if isinstance(where, tuple) else (where,)
        mine = part[part[key] == column]
        others = part[(part[key] != column) & part[mean].notna()]
        if mine.empty or others.empty or mine[mean].isna().all():
            continue
        a, b = mine.iloc[0], others.loc[others[mean].idxmin()]
        gap = a[mean] - b[mean]
        error = math.sqrt(a[std] ** 2 / a["n_ok"] + b[std] ** 2 / b["n_ok"])
        z = gap / error if error > 0 else math.copysign(math.inf, gap) if gap else 0.0
        rows.append({**dict(zip([k for k in (table_key, row_key) if k], where)), column: a[mean],
                     "best other": f"{b[key]} {b[mean]:.3f}", "difference": gap, "standard error": error, "z": z,
                     "verdict": "wins" if z < -_SIGNIFICANT else "loses" if z > _SIGNIFICANT else "ties"})
    return pd.DataFrame(rows)
