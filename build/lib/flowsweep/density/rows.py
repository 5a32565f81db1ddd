"""Rows a user hands a density, checked against the table it was trained on.

A :class:`pandas.DataFrame` is matched to the model's columns by name (any order; a
missing, extra or misnamed column is an error naming it); a NumPy array (or anything
``np.asarray`` takes) must have the model's ``d`` columns in the model's order. Every cell
must be a finite number: the error names the first bad row and column. Values far outside
the training range are fine: they get a (very low) log-density.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

__all__ = ["RowsError", "as_rows"]


class RowsError(ValueError):
    """Rows that a density cannot score; the message names the column or row."""


def as_rows(X: Any, columns: Sequence[str]) -> np.ndarray:
    """``X`` as float64 ``[n, d]`` in the order of ``columns``; :class:`RowsError` otherwise."""
    if isinstance(X, pd.DataFrame):
        names = [str(c) for c in X.columns]
        missing = [c for c in columns if c not in names]
        extra = [c for c in names if c not in columns]
        if missing or extra:
            raise RowsError(f"columns: missing {missing}, unexpected {extra}; the model's columns are {list(columns)}")
        if len(set(names)) != len(names):
            raise RowsError(f"columns: a column appears twice in {names}")
        frame = X.rename(columns=str)[list(columns)]
        bad = [c for c in columns if not pd.api.types.is_numeric_dtype(frame[c]) or pd.api.types.is_bool_dtype(frame[c])]
        if bad:
            raise RowsError(f"column {bad[0]!r}: not numbers (dtype {frame[bad[0]].dtype})")
        x = frame.to_numpy(dtype=np.float64)
    else:
        try:
            x = np.asarray(X, dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise RowsError(f"rows: not numbers ({error})") from None
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2 or x.shape[1] != len(columns):
            raise RowsError(f"rows: shape {x.shape}, expected (n, {len(columns)}) with columns {list(columns)}")
    finite = np.isfinite(x)
    if not finite.all():
        row, col = np.argwhere(~finite)[0]
        raise RowsError(f"row {row}, column {columns[col]!r}: {x[row, col]} is not a finite number")
    return x
