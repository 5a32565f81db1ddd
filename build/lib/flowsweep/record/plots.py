"""The figures of a job's parent run: its instances' training and validation curves, their
masks, and their searches. One figure of each per job, not per instance: the instance runs
hold the same numbers as metrics (MLflow charts them) and ``masks.json``.

They are drawn by the MLflow writer process (:mod:`flowsweep.record.figures`), beside the
job, from plain values: every function here takes the file to write and lists. They must
read at a glance in the MLflow UI's artifact view: titles name dataset, layout, depth and
how many instances are shown, axes carry integer ticks, step axes name the optimizer,
overlapping series differ in colour and style. matplotlib is imported with the first
figure, through ``matplotlib.figure.Figure`` (no pyplot state, the Agg canvas).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np

from flowsweep.record.figures import figure

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["smoothed", "job_curves", "job_masks", "job_search"]

_DPI = 110
#: Font sizes (points): title, axis labels, ticks and legends.
_TITLE, _LABEL, _SMALL = 10, 9, 8
#: Share of the data range added above and below curves (matplotlib's default margin).
_PAD = 0.05
#: Fast PNG compression: a figure's file grows by about a third, its encoding is ~4x cheaper.
_PNG = {"compress_level": 1}
#: Inches per mask column (one layer of one instance) and per feature row.
_COLUMN, _ROW = 0.07, 0.2


def smoothed(curve: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving mean of each column of ``curve`` ``[steps, K]`` over ``window`` steps
    (fewer at the start), so that a minibatch curve's trend shows through its noise."""
    total = np.cumsum(curve, axis=0)
    shifted = np.vstack([np.zeros((window, curve.shape[1])), total[:-window]]) if window < len(curve) else 0.0
    counts = np.minimum(np.arange(1, len(curve) + 1), window)[:, None]
    return (total - shifted) / counts


def _save(fig: Any, path: Path) -> None:
    kwargs = {"pil_kwargs": _PNG} if path.suffix == ".png" else {}
    fig.savefig(path, **kwargs)


def _integer_steps(ax: Axes) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=6))
    ax.tick_params(labelsize=_SMALL)


def _limits(ax: Axes, values: np.ndarray, top: float = 0.98) -> None:
    """y limits from the finite values up to their ``top`` quantile: the first steps' bpd
    would flatten the rest."""
    finite = values[np.isfinite(values)]
    if len(finite):
        low, high = np.quantile(finite, [0.0, top])
        if high > low:
            ax.set_ylim(low - _PAD * (high - low), high + _PAD * (high - low))


@figure
def job_curves(path: Path, steps: list, raw: list, smooth: list, window: int, optimizer: str, title: str,
               val_steps: Optional[list] = None, val: Optional[list] = None, note: str = "") -> None:
    """Each instance's minibatch bpd (``raw`` faint, its moving mean over ``window`` steps
    ``smooth`` drawn over it, both ``[len(steps), n]``) and, beside it, its validation bpd
    (``val`` ``[len(val_steps), n]``) where the job has a validation split."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    x, y, trend = np.asarray(steps), np.asarray(raw, dtype=float), np.asarray(smooth, dtype=float)
    n = y.shape[1] if y.ndim == 2 else 0
    panels = 2 if val_steps else 1
    fig = Figure(figsize=(5.2 * panels + 0.6, 4.0), dpi=_DPI, layout="constrained")
    axes = fig.subplots(1, panels, squeeze=False)[0]
    ax = axes[0]
    for k in range(n):
        ax.plot(x, y[:, k], lw=0.5, alpha=0.15, color=f"C{k % 10}")
        ax.plot(x, trend[:, k], lw=1.0, alpha=0.85, color=f"C{k % 10}", ls=("-", "--", ":")[k // 10 % 3])
    _limits(ax, trend if n else y)
    ax.legend(handles=[Line2D([], [], color="grey", lw=0.5, alpha=0.4, label="minibatch (raw)"),
                       Line2D([], [], color="grey", lw=1.0, label=f"moving mean of {window} steps")],
              fontsize=_SMALL, loc="upper right", title=f"n = {n} instances", title_fontsize=_SMALL)
    ax.set_xlabel(f"training step ({optimizer})", fontsize=_LABEL)
    ax.set_ylabel("train bpd (minibatch)", fontsize=_LABEL)
    ax.set_title("training", fontsize=_LABEL)
    _integer_steps(ax)
    if note:
        ax.text(0.01, 0.98, note, transform=ax.transAxes, va="top", fontsize=_SMALL)
    if val_steps:
        ax = axes[1]
        v = np.asarray(val, dtype=float)
        for k in range(v.shape[1]):
            ax.plot(val_steps, v[:, k], lw=1.0, marker=".", ms=3, alpha=0.85, color=f"C{k % 10}",
                    ls=("-", "--", ":")[k // 10 % 3])
        _limits(ax, v, top=1.0)
        ax.set_xlabel(f"training step ({optimizer})", fontsize=_LABEL)
        ax.set_ylabel("validation bpd (whole split)", fontsize=_LABEL)
        ax.set_title(f"validation (n = {v.shape[1]}; lower is better)", fontsize=_LABEL)
        _integer_steps(ax)
    fig.suptitle(title, fontsize=_TITLE)
    _save(fig, path)


def _label(instances: Sequence[int]) -> str:
    """``0``, ``0–19`` (a run of consecutive instances) or ``3,7``."""
    if len(instances) > 1 and list(instances) == list(range(instances[0], instances[-1] + 1)):
        return f"{instances[0]}–{instances[-1]}"
    return ",".join(map(str, instances))


@figure
def job_masks(path: Path, masks: list, groups: list, features: list, m: int, title: str) -> None:
    """Every distinct structure of the job (``masks[g]`` ``[depth, d]``, 1 where a feature
    conditions the layer's coupling) with the instances that have it (``groups[g]``): features
    down (named, so a wide table stays readable), one column per layer, structures side by side."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    blocks = [np.asarray(mask, dtype=float).T for mask in masks]  # [d, depth] each
    d, depth = blocks[0].shape
    gap = np.full((d, 1), np.nan)
    image = np.hstack([part for block in blocks for part in (block, gap)][:-1])
    names = [f"{j} {name}" for j, name in enumerate(features)]
    left = 0.5 + 0.06 * max(len(name) for name in names)
    width = max(6.0, left + 0.4 + _COLUMN * image.shape[1] * max(1.0, 8 / depth))
    fig = Figure(figsize=(width, 1.9 + _ROW * d), dpi=_DPI, layout="constrained")
    ax = fig.add_subplot()
    cmap = _greys()
    ax.imshow(np.ma.masked_invalid(image), cmap=cmap, vmin=0, vmax=1, aspect="auto", interpolation="nearest")
    ax.set_yticks(range(d), names, fontsize=_SMALL if d <= 30 else _SMALL - 2)
    centres = [g * (depth + 1) + (depth - 1) / 2 for g in range(len(blocks))]
    ax.set_xticks(centres, [_label(group) for group in groups], fontsize=_SMALL,
                  rotation=90 if len(blocks) > 12 else 0)
    ax.tick_params(axis="x", length=0)
    ax.set_xlabel(f"instance (each block: layers 1–{depth}, left to right)", fontsize=_LABEL)
    ax.set_ylabel("feature", fontsize=_LABEL)
    n = sum(len(group) for group in groups)
    ax.set_title(f"{title}: {len(blocks)} distinct structure(s) of {n} instances", fontsize=_TITLE)
    fig.legend(handles=[Patch(facecolor="black", edgecolor="grey", label=f"conditions the coupling ({m} per layer)"),
                        Patch(facecolor="white", edgecolor="grey", label=f"transformed ({d - m} per layer)")],
               loc="outside lower center", ncol=2, fontsize=_SMALL, frameon=False)
    _save(fig, path)


def _greys() -> Any:
    from matplotlib import colormaps

    return colormaps["Greys"].with_extremes(bad="#f3e9d2")  # bad: the gap between two structures


@figure
def job_search(path: Path, best: list, label: str, title: str, note: str = "") -> None:
    """Each instance's search: ``best`` ``[iterations, n]`` is what :func:`flowsweep.record.results.best_metric`
    names ``label`` (a best so far, or each rung's best), in trial bpd; the median in black."""
    from matplotlib.figure import Figure

    values = np.asarray(best, dtype=float)
    fig = Figure(figsize=(6.0, 4.0), dpi=_DPI, layout="constrained")
    ax = fig.add_subplot()
    steps = np.arange(len(values))
    for k in range(values.shape[1]):
        ax.plot(steps, values[:, k], lw=0.8, alpha=0.6, color=f"C{k % 10}", ls=("-", "--", ":")[k // 10 % 3])
    with warnings.catch_warnings():  # an iteration where no instance is finite has no median
        warnings.simplefilter("ignore", RuntimeWarning)
        median = np.nanmedian(np.where(np.isfinite(values), values, np.nan), axis=1)
    ax.plot(steps, median, lw=1.8, color="black", label=f"median of n = {values.shape[1]} instances")
    ax.legend(fontsize=_SMALL, loc="upper right")
    _limits(ax, values)
    if note:
        ax.text(0.01, 0.98, note, transform=ax.transAxes, va="top", fontsize=_SMALL)
    ax.set_xlabel("search iteration", fontsize=_LABEL)
    ax.set_ylabel(f"{label} (trial bpd, lower is better)", fontsize=_LABEL)
    ax.set_title(f"{title}: search, {label}", fontsize=_TITLE)
    _integer_steps(ax)
    _save(fig, path)
