"""Parse one delimited text file into a float64 feature matrix, or say exactly what is wrong.

The fast path is a single pandas C-engine parse with explicit dtypes. Only when it
fails, or leaves a missing or non-finite value, is the text walked line by line to
name the first bad line and column: a corrupted file must never load as a smaller or
silently different dataset.
"""

from __future__ import annotations

import csv
import io
import re
import warnings
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np
import pandas as pd

from .sources import DataError

__all__ = ["read_table", "resolution", "resolve_columns"]

_WHITESPACE = r"\s+"


def _split(line: str, sep: str) -> list[str]:
    if sep == _WHITESPACE:
        return line.split()
    if len(sep) == 1:
        # csv.reader agrees with pandas on quoted fields.
        return next(csv.reader([line], delimiter=sep), [])
    return re.split(sep, line.strip())


def resolve_columns(
    candidates: Sequence[str], labels: Sequence[str], wanted: Optional[Sequence[Any]], key: str, source: str
) -> list[str]:
    """Map ``wanted`` (names, or 0-based positions among ``candidates``) to column names.

    ``candidates`` are the file's non-label columns in file order; null ``wanted`` keeps
    them all. ``key`` names the config key in messages (``dataset.columns``).
    """
    if wanted is None:
        return list(candidates)
    chosen: list[str] = []
    absent: list[str] = []
    for item in wanted:
        if isinstance(item, int) and not isinstance(item, bool):
            if not 0 <= item < len(candidates):
                raise DataError(
                    f"{key}: position {item} is out of range; {source} has {len(candidates)} feature "
                    f"columns, 0..{len(candidates) - 1} = {list(candidates)}."
                )
            chosen.append(candidates[item])
        elif str(item).strip() in labels:
            raise DataError(f"{key}: {str(item).strip()!r} in {source} is a label column, not a feature.")
        elif str(item).strip() in candidates:
            chosen.append(str(item).strip())
        else:
            absent.append(str(item))
    if absent:
        raise DataError(
            f"{source} has no column(s) {absent} (asked for by {key}); its feature columns are "
            f"{list(candidates)}. Fix {key} (names or 0-based positions)."
        )
    if len(set(chosen)) != len(chosen):
        raise DataError(f"{key}: a column is selected twice: {chosen}.")
    if not chosen:
        raise DataError(f"{key}: no feature column selected from {source}.")
    return chosen


def read_table(
    data: bytes,
    source: str,
    *,
    names: Optional[Sequence[str]],
    sep: str,
    labels: Sequence[str],
    wanted: Optional[Sequence[Any]],
    key: str,
    hint: str,
    dequantize: bool = False,
) -> tuple[np.ndarray, list[str]]:
    """Parse ``data`` (the bytes of ``source``) and return ``(x, columns)``.

    ``x`` is float64 ``[rows, len(columns)]``, all finite. ``names`` are the column
    names of a headerless file (null: line 1 is a header, its names stripped of
    spaces). Every line must have all fields; unused columns are read as text.
    ``hint`` (what to do) ends every error message. With ``dequantize`` (``dataset.dequantize``),
    columns of a recorded resolution (integers, fixed decimals) are not checked for equal
    copies: each gets noise of its own (a constant pixel of an image table becomes uniform).
    """
    has_header = names is None
    if has_header:
        first = data.split(b"\n", 1)[0].decode("utf-8-sig", errors="replace").rstrip("\r")
        if not first.strip():
            raise DataError(f"{source}: line 1 should be a header row of column names but is empty. {hint}")
        file_columns = [c.strip() for c in _split(first, sep)]
        if all(_is_number(c) for c in file_columns):  # the first data row taken for a header
            raise DataError(f"{source}: line 1 ({first.strip()[:60]!r}) is a row of numbers, not a header of column "
                            f"names; a headerless file needs dataset.names=[...]. {hint}")
    else:
        file_columns = [str(c) for c in names]
    duplicated = sorted({c for c in file_columns if file_columns.count(c) > 1})
    if duplicated:
        raise DataError(f"{source}: column name(s) {duplicated} occur more than once. {hint}")
    candidates = [c for c in file_columns if c not in labels]
    columns = resolve_columns(candidates, labels, wanted, key, source)
    dtypes = {c: ("float64" if c in columns else str) for c in file_columns}
    engine = "c" if len(sep) == 1 or sep == _WHITESPACE else "python"
    try:
        with warnings.catch_warnings():
            # index_col=False turns a surplus field on line 1 into a warning; make it an error.
            warnings.simplefilter("error", pd.errors.ParserWarning)
            frame = pd.read_csv(
                io.BytesIO(data),
                sep=sep,
                header=0 if has_header else None,
                names=file_columns,
                dtype=dtypes,
                engine=engine,
                index_col=False,
                skip_blank_lines=False,  # keeps row i on a known line, for messages
                keep_default_na=False,  # a label "NA" is text; a feature "NA" is an error
                encoding="utf-8",
            )
    except pd.errors.EmptyDataError:
        raise DataError(f"{source}: the file is empty. {hint}") from None
    except (ValueError, UnicodeDecodeError, pd.errors.ParserWarning) as err:
        raise _diagnose(data, source, file_columns, columns, sep, has_header, hint, err) from None
    # Blank lines at the very end are harmless; anywhere else they are reported below.
    filled = frame.notna().to_numpy()
    last = len(frame)
    while last > 0 and not filled[last - 1].any():
        last -= 1
    x = frame[columns].to_numpy(dtype=np.float64)[:last]
    if not (np.isfinite(x).all() and filled[:last].all()):
        raise _diagnose(data, source, file_columns, columns, sep, has_header, hint, None)
    if last == 0:
        raise DataError(f"{source}: the file has no data rows. {hint}")
    _check_float32(x, columns, source, has_header, hint)
    if len(x) > 1 and (x == x[0]).all():
        raise DataError(f"{source}: all {len(x)} data rows are the same, so no density fits them (the bpd would "
                        f"measure dequantization noise only). {hint}")
    noisy = resolution(x) > 0 if dequantize else np.zeros(x.shape[1], dtype=bool)
    _check_distinct(x[:, ~noisy], [c for c, n in zip(columns, noisy) if not n], source, hint)
    return x, columns


#: Most decimals :func:`resolution` looks for.
_MAX_DECIMALS = 8


def resolution(x: np.ndarray) -> np.ndarray:
    """Per column of ``x`` ``[n, d]`` (float64 as parsed), ``10^-k`` for the fewest decimals
    ``k <= 8`` that write every value (``1.0`` for integers); 0 for a column that needs more
    (continuous, as synthetic data: nothing to dequantize)."""
    width = np.zeros(x.shape[1])
    for j in range(x.shape[1]):
        for k in range(_MAX_DECIMALS + 1):
            scaled = x[:, j] * 10.0**k
            if np.abs(scaled - np.round(scaled)).max() <= 1e-4:
                width[j] = 10.0**-k
                break
    return width


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


#: The largest magnitude a float32 holds: flowsweep trains in float32.
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _check_float32(x: np.ndarray, columns: Sequence[str], source: str, has_header: bool, hint: str) -> None:
    """A value beyond float32 becomes inf when the table is converted for training."""
    beyond = np.abs(x) > _FLOAT32_MAX
    if beyond.any():
        row, col = map(int, np.argwhere(beyond)[0])
        raise DataError(f"{source}: line {row + 1 + has_header}, column {columns[col]!r}: {x[row, col]:g} is beyond "
                        f"the float32 range (|x| <= {_FLOAT32_MAX:.3g}) flowsweep trains in. {hint}")


def _check_distinct(x: np.ndarray, columns: Sequence[str], source: str, hint: str) -> None:
    """Two feature columns equal in every row leave a flow no density to fit: its bpd falls
    without bound as it learns to collapse one onto the other, and would mean nothing."""
    seen: dict[bytes, str] = {}
    for name, column in zip(columns, x.T):
        other = seen.setdefault(np.ascontiguousarray(column).tobytes(), name)
        if other != name:
            raise DataError(f"{source}: columns {other!r} and {name!r} hold the same value in every row, so no "
                            f"density fits them (bpd falls without bound). {hint}")


def _diagnose(
    data: bytes,
    source: str,
    file_columns: list[str],
    columns: list[str],
    sep: str,
    has_header: bool,
    hint: str,
    err: Optional[BaseException],
) -> DataError:
    """Walk the text to name the first bad line and column (slow path, errors only)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        return DataError(f"{source}: line {line} is not UTF-8 text (byte {exc.start}); the file is corrupted. {hint}")
    lines = text.split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    positions = sorted(file_columns.index(c) for c in columns)
    for number, line in enumerate(lines[1:] if has_header else lines, start=2 if has_header else 1):
        line = line.rstrip("\r")
        if not line.strip():
            return DataError(f"{source}: line {number} is empty. {hint}")
        fields = _split(line, sep)
        if len(fields) != len(file_columns):
            truncated = " (the file looks truncated)" if number == len(lines) and len(fields) < len(file_columns) else ""
            return DataError(
                f"{source}: line {number} has {len(fields)} fields, expected {len(file_columns)} "
                f"({', '.join(file_columns)}){truncated}. {hint}"
            )
        for pos in positions:
            cell = fields[pos].strip()
            if not cell:
                return DataError(f"{source}: line {number}, column {file_columns[pos]!r} is empty. {hint}")
            try:
                value = float(cell)
            except ValueError:
                return DataError(f"{source}: line {number}, column {file_columns[pos]!r}: {cell!r} is not a number. {hint}")
            if not np.isfinite(value):
                return DataError(
                    f"{source}: line {number}, column {file_columns[pos]!r}: {cell!r} is not a finite number. {hint}"
                )
    detail = f" ({type(err).__name__}: {err})" if err is not None else ""
    return DataError(f"{source}: cannot be parsed{detail}. {hint}")
