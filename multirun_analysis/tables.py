"""The paper's tables from the long-form aggregate: one per dataset, rows = depth, columns = layout.

Generally the first ``group_by`` param splits the tables, the second gives the rows and
the rest the columns (more than one: a column MultiIndex, e.g. layout × search.warm_start).
Cells read "mean ± std" over the non-diverged instances, plus "(k div.)" when k > 0;
the lowest mean of each row is the best: bold in Markdown and LaTeX (pandas Styler's
``highlight_min`` with ``to_latex(convert_css=True)``), a trailing ``*`` in text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from multirun_analysis.aggregate import ordered_values

__all__ = ["Table", "FORMATS", "build_tables", "render", "render_text", "render_markdown", "render_latex"]

FORMATS = ("text", "markdown", "latex", "csv")
_LATEX_SPECIAL = {c: "\\" + c for c in "&%$#_{}"}


@dataclass
class Table:
    """One table: numeric means (NaN where every instance diverged), the cell texts, the best mask."""

    title: str
    split: str
    means: pd.DataFrame
    stds: pd.DataFrame
    n: pd.DataFrame
    n_diverged: pd.DataFrame

    @property
    def best(self) -> pd.DataFrame:
        """True where a cell holds its row's lowest mean (all ties marked)."""
        return self.means.eq(self.means.min(axis=1), axis=0)

    def cells(self, precision: int = 3, pm: str = "±") -> pd.DataFrame:
        """The cell texts, unmarked; empty where a combination has no runs."""
        out = pd.DataFrame("", index=self.means.index, columns=self.means.columns)
        for row in self.means.index:
            for col in self.means.columns:
                out.loc[row, col] = _cell(self.means.loc[row, col], self.stds.loc[row, col],
                                          self.n.loc[row, col], self.n_diverged.loc[row, col], precision, pm)
        return out

    def caption(self) -> str:
        counts = self.n.to_numpy().ravel()
        counts = counts[~np.isnan(counts)].astype(int)
        low, high = (counts.min(), counts.max()) if len(counts) else (0, 0)
        n = f"n = {low}" if low == high else f"n = {low}-{high}"
        return f"{self.title}: {self.split} bpd, mean ± std over {n} instances per cell; lowest mean per row marked"


def _cell(mean: float, std: float, n: float, n_div: float, precision: int, pm: str) -> str:
    if pd.isna(n):
        return ""
    n, n_div = int(n), int(n_div)
    if math.isnan(mean):
        return f"all {n} diverged"
    text = f"{mean:.{precision}f}" + ("" if math.isnan(std) else f" {pm} {std:.{precision}f}")
    return text + (f" ({n_div} div.)" if n_div else "")


def _ordered_columns(columns: pd.Index) -> pd.Index:
    if columns.nlevels == 1:
        return pd.Index(ordered_values(columns.name or "", columns), name=columns.name)
    ranks = [{v: i for i, v in enumerate(ordered_values(name, level))}
             for name, level in zip(columns.names, columns.levels)]
    return pd.MultiIndex.from_tuples(
        sorted(columns, key=lambda t: tuple(r[v] for r, v in zip(ranks, t))), names=columns.names)


def build_tables(agg: pd.DataFrame, group_by: Sequence[str], split: str = "test") -> list[Table]:
    """Split the aggregate into tables (first key), rows (second key), columns (the rest)."""
    keys = list(group_by)
    table_key = keys[0] if len(keys) > 1 else None
    row_key, col_keys = keys[1 if table_key else 0], keys[2:]
    values = {"means": f"{split}_bpd_mean", "stds": f"{split}_bpd_std", "n": "n", "n_diverged": "n_diverged"}
    tables = []
    parts = agg.groupby(table_key, sort=False) if table_key else [("all runs", agg)]
    for title, part in parts:
        part = part.copy()
        if not col_keys:
            part["_column"] = f"{split} bpd"
        columns = col_keys or ["_column"]
        indexed = part.set_index([row_key, *columns])
        frames = {}
        for name, column in values.items():
            frame = indexed[column].unstack(columns) if columns else indexed[column].to_frame()
            frame = frame.reindex(index=pd.Index(ordered_values(row_key, part[row_key]), name=row_key),
                                  columns=_ordered_columns(frame.columns))
            if not col_keys:
                frame.columns.name = None
            frames[name] = frame.astype(float)
        label = f"{table_key} = {title}" if table_key and table_key != "dataset" else str(title)
        tables.append(Table(title=label, split=split, **frames))
    return tables


def _flat_columns(frame: pd.DataFrame) -> pd.DataFrame:
    if frame.columns.nlevels > 1:
        frame = frame.copy()
        frame.columns = [" / ".join(map(str, c)) for c in frame.columns]
    return frame


def render_text(table: Table, precision: int = 3) -> str:
    """Plain ``DataFrame.to_string``; the best cell of a row ends in `` *``."""
    cells = table.cells(precision)
    marked = cells.where(~table.best, cells + " *")
    return f"{table.caption()} (*)\n{marked.to_string()}"


def render_markdown(table: Table, precision: int = 3) -> str:
    """A heading and ``DataFrame.to_markdown`` (tabulate); the best cell of a row in bold."""
    cells = table.cells(precision)
    marked = _flat_columns(cells.where(~table.best, "**" + cells + "**"))
    body = marked.to_markdown(disable_numparse=True, stralign="right")
    return f"### {table.caption()} (bold)\n\n{body}"


def _latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(c, c) for c in str(text))


def render_latex(table: Table, precision: int = 3) -> str:
    """pandas Styler: ``highlight_min`` bolds the best cell of a row, ``format`` writes mean $\\pm$ std."""
    means = table.means.copy()
    means.index.name = _latex_escape(means.index.name)
    means.columns.names = [None if n is None else _latex_escape(n) for n in means.columns.names]
    styler = means.style.highlight_min(axis=1, props="font-weight: bold;")
    cells = table.cells(precision, pm=r"$\pm$")
    cells.index, cells.columns = means.index, means.columns
    for row in means.index:
        for col in means.columns:
            styler.format(lambda _, text=cells.loc[row, col]: text, subset=pd.IndexSlice[[row], [col]])
    styler.format_index(escape="latex", axis=0).format_index(escape="latex", axis=1)
    caption = _latex_escape(table.caption()).replace("±", r"$\pm$") + " (bold)"
    return styler.to_latex(convert_css=True, hrules=True, multicol_align="c", caption=caption,
                           position_float="centering")


def render(tables: Sequence[Table], fmt: str, precision: int = 3) -> str:
    """All tables in one of ``text``, ``markdown``, ``latex``, separated by blank lines."""
    renderer = {"text": render_text, "markdown": render_markdown, "latex": render_latex}[fmt]
    return "\n\n".join(renderer(t, precision) for t in tables) + "\n"
