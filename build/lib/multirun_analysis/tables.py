"""The paper's tables from the long-form aggregate: one per dataset, rows = depth, columns = layout.

Generally the first ``group_by`` param splits the tables, the second gives the rows and
the rest the columns (more than one: a column MultiIndex, e.g. layout × search.warm_start).
Cells read "mean ± std" over the non-diverged instances, plus "(k div.)" when k > 0;
the lowest mean of each row is the best: bold in Markdown and LaTeX (a pandas Styler
with a CSS ``font-weight: bold`` on the best cells and ``to_latex(convert_css=True)``),
a trailing ``*`` in text.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from multirun_analysis.aggregate import ordered_values, split_keys
from multirun_analysis.recovery import RECALL, share_column

__all__ = ["Table", "FORMATS", "build_tables", "render", "render_text", "render_markdown", "render_latex",
           "render_recovery"]

#: The paper-form renderings (``csv`` is the long-form aggregate, see the CLI).
FORMATS = ("text", "markdown", "latex")
_LATEX_SPECIAL = {c: "\\" + c for c in "&%$#_{}"}


@dataclass
class Table:
    """One table: ``[rows, columns]`` frames of means (NaN where every instance diverged),
    stds, instance counts and diverged counts (NaN where a combination has no runs).

    ``value`` is the table key's value (``None`` when there is one table of all runs).
    """

    title: str
    split: str
    means: pd.DataFrame
    stds: pd.DataFrame
    n: pd.DataFrame
    n_diverged: pd.DataFrame
    value: Optional[str] = None
    #: Recovered shares of the oracle's gain over parity and mean dependency recalls, same
    #: shape; ``None`` when the runs have neither (see multirun_analysis.recovery).
    shares: Optional[pd.DataFrame] = None
    recall: Optional[pd.DataFrame] = None

    @property
    def slug(self) -> str:
        """The title as a file-name part."""
        return re.sub(r"[^A-Za-z0-9._-]+", "_", self.title).strip("_") or "table"

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

    def recovery_cells(self) -> Optional[pd.DataFrame]:
        """Cell texts ``"46 % (recall 0.72)"`` of the recovery table; ``None`` when there is nothing to show."""
        if self.shares is None and self.recall is None:
            return None
        nan = pd.DataFrame(np.nan, index=self.means.index, columns=self.means.columns)
        shares, recall = (nan if f is None else f for f in (self.shares, self.recall))
        out = pd.DataFrame("", index=self.means.index, columns=self.means.columns)
        for row in out.index:
            for col in out.columns:
                # round() to an int: a share of -0.001 reads "0 %", not "-0 %"
                parts = [] if pd.isna(shares.loc[row, col]) else [f"{round(100 * shares.loc[row, col])} %"]
                if not pd.isna(recall.loc[row, col]):
                    parts.append(f"(recall {recall.loc[row, col]:.2f})" if parts else f"recall {recall.loc[row, col]:.2f}")
                out.loc[row, col] = " ".join(parts)
        return out

    def recovery_caption(self) -> str:
        """What the recovery table's cells are."""
        return (f"{self.title}: share of the oracle's gain over parity recovered, (parity − x) / (parity − oracle) "
                f"of the mean {self.split} bpd, and mean dependency recall")

    def caption(self) -> str:
        """What the cells are: split, statistic, instance counts, the best-per-row rule."""
        counts = self.n.to_numpy().ravel()
        counts = counts[~np.isnan(counts)].astype(int)
        low, high = (counts.min(), counts.max()) if len(counts) else (0, 0)
        n = f"n = {low}" if low == high else f"n = {low}-{high}"
        diverged = ", diverged ones (div.) counted and left out" if np.nansum(self.n_diverged.to_numpy()) else ""
        return (f"{self.title}: {self.split} bpd, mean ± std over {n} instances per cell{diverged}; "
                "lowest mean per row marked")


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
    table_key, row_key, col_keys = split_keys(group_by)
    values = {"means": f"{split}_bpd_mean", "stds": f"{split}_bpd_std", "n": "n", "n_diverged": "n_diverged"}
    values.update({name: column for name, column in (("shares", share_column(split)), ("recall", RECALL))
                   if column in agg.columns})
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
        tables.append(Table(title=label, split=split, value=title if table_key else None, **frames))
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
    """pandas Styler over the cell texts: CSS bold on the best cells, converted by ``to_latex``."""
    cells = table.cells(precision, pm=r"$\pm$")
    cells.index.name = None if cells.index.name is None else _latex_escape(cells.index.name)
    cells.columns.names = [None if n is None else _latex_escape(n) for n in cells.columns.names]
    bold = np.where(table.best.to_numpy(), "font-weight: bold;", "")
    styler = cells.style.apply(lambda _: bold, axis=None)
    styler.format_index(escape="latex", axis=0).format_index(escape="latex", axis=1)
    caption = _latex_escape(table.caption()).replace("±", r"$\pm$") + " (bold)"
    column_format = "l" * cells.index.nlevels + "r" * len(cells.columns)
    return styler.to_latex(convert_css=True, hrules=True, column_format=column_format, multicol_align="c",
                           caption=caption, position_float="centering")


def render_recovery(table: Table, fmt: str) -> Optional[str]:
    """The recovery table of ``table`` in ``fmt``, no cell marked; ``None`` when it has none."""
    cells = table.recovery_cells()
    if cells is None:
        return None
    if fmt == "text":
        return f"{table.recovery_caption()}\n{cells.to_string()}"
    if fmt == "markdown":
        body = _flat_columns(cells).to_markdown(disable_numparse=True, stralign="right")
        return f"### {table.recovery_caption()}\n\n{body}"
    cells = cells.apply(lambda column: column.str.replace("%", r"\%"))
    cells.index.name = None if cells.index.name is None else _latex_escape(cells.index.name)
    cells.columns.names = [None if n is None else _latex_escape(n) for n in cells.columns.names]
    styler = cells.style.format_index(escape="latex", axis=0).format_index(escape="latex", axis=1)
    return styler.to_latex(hrules=True, column_format="l" * cells.index.nlevels + "r" * len(cells.columns),
                           multicol_align="c", caption=_latex_escape(table.recovery_caption()).replace("−", "-"),
                           position_float="centering")


def render(tables: Sequence[Table], fmt: str, precision: int = 3) -> str:
    """All tables in one of ``text``, ``markdown``, ``latex``, separated by blank lines; each
    followed by its recovery table where the runs have one."""
    renderer = {"text": render_text, "markdown": render_markdown, "latex": render_latex}[fmt]
    blocks = [block for t in tables for block in (renderer(t, precision), render_recovery(t, fmt)) if block]
    return "\n\n".join(blocks) + "\n"
