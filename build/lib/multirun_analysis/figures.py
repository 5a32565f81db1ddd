"""The analysis figures, one file per table (per dataset by default): PNG, or PDF or SVG for a paper.

* ``bpd_<table>.<format>``: mean bpd against the row key (depth), one line per column
  (layout), a band of ± one std; the numbers of the table.
* ``batch_bpd_<table>.<format>``: the mean minibatch-bpd curve of each cell, one panel per
  row value (depth), one line per column (layout); diverged instances left out.
* ``search_<table>.<format>``: best-so-far search value against iteration, mean over the
  instances that searched (``search_best_bpd``), one line per row value (depth) and
  column (search settings). ``search_rungs_<table>.<format>``: the same of halving's
  ``search_iteration_best_bpd`` (the default search), each rung's best: rungs train for
  different lengths, so the line is no best so far.

Figures are ``matplotlib.figure.Figure`` objects (no pyplot state).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from mlflow.tracking import MlflowClient

from multirun_analysis.aggregate import group_frame, ordered_values, split_keys
from multirun_analysis.histories import cell_means, metric_histories
from multirun_analysis.tables import Table

__all__ = ["FIGURE_FORMATS", "bpd_figure", "curves_figure", "write_figures"]

#: The files a figure can be written as (``--figure-format``): PNG for a look, PDF or SVG (vectors) for a paper.
FIGURE_FORMATS = ("png", "pdf", "svg")

_DPI = 100
_PANEL = (4.0, 3.0)
#: The y axis of the minibatch curves stops at this quantile of their values.
_TOP_QUANTILE = 0.98


def _positions(labels: Sequence[str]) -> np.ndarray:
    """Numeric x positions when every label is a number, else 0, 1, 2, ..."""
    try:
        return np.array([float(v) for v in labels])
    except ValueError:
        return np.arange(len(labels), dtype=float)


def _label(values: Sequence[str]) -> str:
    return " / ".join(map(str, values)) if isinstance(values, tuple) else str(values)


def bpd_figure(table: Table) -> Figure:
    """Mean bpd against the table's rows, one line per column, ± std as a band."""
    fig = Figure(figsize=(5.0, 3.5), dpi=_DPI)
    ax = fig.add_subplot()
    x = _positions(list(table.means.index))
    for column in table.means.columns:
        mean = table.means[column].to_numpy(float)
        std = np.nan_to_num(table.stds[column].to_numpy(float))
        counts = sorted({int(c) for c in table.n[column].dropna()})
        n = f"n = {counts[0]}" if len(counts) == 1 else f"n = {counts[0]}–{counts[-1]}" if counts else "n = 0"
        line, = ax.plot(x, mean, marker="o", ms=3, label=f"{_label(column)} ({n})")
        ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2, lw=0)
    # A tick at each row value (depths 2, 4, 6, 8; never 2.25), numeric rows at their values.
    ax.set_xticks(x, list(table.means.index))
    ax.set_xlabel(str(table.means.index.name))
    ax.set_ylabel(f"{table.split} bpd (mean ± std)")
    ax.set_title(table.title, fontsize=10)
    ax.legend(fontsize=8, title=" / ".join(str(n) for n in table.means.columns.names if n), title_fontsize=8)
    fig.tight_layout()
    return fig


def curves_figure(curves: pd.DataFrame, title: str, xlabel: str, ylabel: str,
                  panel_level: Optional[str] = None, top_quantile: Optional[float] = None) -> Figure:
    """One line per column of ``curves`` (``[steps, cells]``), one panel per value of ``panel_level``.

    Lines are labelled by the column levels (other than the panel's) whose value varies.
    ``top_quantile`` caps the y axis at that quantile of all values, so the first few
    steps of training (bpd far above the rest) do not flatten the curves.
    """
    if not isinstance(curves.columns, pd.MultiIndex):
        curves = curves.set_axis(pd.MultiIndex.from_arrays([curves.columns]), axis=1)
    levels = list(curves.columns.names)
    panels = ordered_values(panel_level, curves.columns.get_level_values(panel_level)) if panel_level else [None]
    line_levels = [n for n in levels if n != panel_level]
    varying = [n for n in line_levels if curves.columns.get_level_values(n).nunique() > 1] or line_levels
    cols = min(len(panels), 4)
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(_PANEL[0] * cols, _PANEL[1] * rows), dpi=_DPI)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    colors: dict[str, str] = {}
    for ax, panel in zip(axes, panels):
        part = curves if panel is None else curves.xs(panel, level=panel_level, axis=1, drop_level=False)
        for column in _ordered(part.columns):
            label = _label(tuple(column[levels.index(n)] for n in varying))
            color = colors.setdefault(label, f"C{len(colors) % 10}")
            series = part[column].dropna()
            ax.plot(series.index, series.to_numpy(), lw=1.0, color=color, label=label)
        _cap(ax, part.to_numpy(float), top_quantile)
        ax.set_title(title if panel is None else f"{title}, {panel_level} = {panel}", fontsize=9)
        ax.set_xlabel(xlabel)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=True))
        if varying:
            ax.legend(fontsize=7, title=" / ".join(varying), title_fontsize=7)
    for ax in axes[:: cols]:
        ax.set_ylabel(ylabel)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


def _cap(ax: Axes, values: np.ndarray, top_quantile: Optional[float]) -> None:
    """Stop the y axis at ``top_quantile`` of ``values`` (no-op for ``None``)."""
    values = values[np.isfinite(values)]
    if top_quantile is None or not len(values):
        return
    low, high = values.min(), np.quantile(values, top_quantile)
    if high > low:
        ax.set_ylim(low - 0.05 * (high - low), high)


def _ordered(columns: pd.MultiIndex) -> list[tuple]:
    ranks = [{v: i for i, v in enumerate(ordered_values(n, columns.get_level_values(n)))} for n in columns.names]
    return sorted(columns, key=lambda c: tuple(r[v] for r, v in zip(ranks, c)))


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path)
    return path


#: The search figures: file name, metric, what its y axis says. ``search_best_bpd`` is a best
#: so far (trials of one fidelity); halving's ``search_iteration_best_bpd`` is each rung's best.
_SEARCH_FIGURES = (
    ("search", "search_best_bpd", "best-so-far trial bpd (mean)"),
    ("search_rungs", "search_iteration_best_bpd", "best trial bpd of each rung (mean; rungs differ in length)"),
)


def write_figures(client: MlflowClient, runs: pd.DataFrame, tables: Sequence[Table], group_by: Sequence[str],
                  out: Path, fmt: str = "png") -> list[Path]:
    """All three figures for every table into ``out`` as ``fmt`` files (:data:`FIGURE_FORMATS`);
    returns the files written.

    ``runs`` is the loaded frame (one row per run, with ``run_id`` and ``diverged``);
    the tables come from :func:`multirun_analysis.tables.build_tables` with the same ``group_by``.
    """
    table_key, row_key, _ = split_keys(group_by)
    groups = group_frame(runs, group_by).set_index(runs["run_id"])
    batch = _mean_curves(client, runs.loc[~runs["diverged"], "run_id"], "batch_bpd", groups)
    searches: list[tuple[str, pd.DataFrame, dict[str, Any]]] = []  # per search metric logged
    for name, key, ylabel in _SEARCH_FIGURES:
        searched = runs.get(f"metrics.{key}", pd.Series(np.nan, index=runs.index)).notna()
        if searched.any():
            searches.append((name, _mean_curves(client, runs.loc[searched, "run_id"], key, groups),
                             dict(xlabel="search iteration", ylabel=ylabel)))
    written = []
    for table in tables:
        written.append(_save(bpd_figure(table), out / f"bpd_{table.slug}.{fmt}"))
        figures: list[tuple[str, pd.DataFrame, dict[str, Any]]] = [
            ("batch_bpd", batch, dict(xlabel="training step", ylabel="minibatch bpd (mean)", panel_level=row_key,
                                      top_quantile=_TOP_QUANTILE)), *searches]
        for name, curves, kwargs in figures:
            part = _table_part(curves, table_key, table)
            if part is not None:
                written.append(_save(curves_figure(part, table.title, **kwargs), out / f"{name}_{table.slug}.{fmt}"))
    return written


def _mean_curves(client: MlflowClient, run_ids: pd.Series, key: str, groups: pd.DataFrame) -> pd.DataFrame:
    if run_ids.empty:
        return pd.DataFrame()
    return cell_means(metric_histories(client, list(run_ids), key), groups.loc[list(run_ids)])


def _table_part(curves: pd.DataFrame, table_key: Optional[str], table: Table) -> Optional[pd.DataFrame]:
    """The cells of one table (all cells without a table key); ``None`` when it has none."""
    if curves.empty:
        return None
    if table_key is None:
        return curves
    values = curves.columns.get_level_values(table_key)
    part = curves.loc[:, values == table.value]
    return part.droplevel(table_key, axis=1) if part.shape[1] else None
