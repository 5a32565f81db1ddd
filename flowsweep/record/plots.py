"""PNG figures logged with every run: masks, bpd curves, search trajectories, and the
overlays of a job's instances on its parent run.

Figures are built on ``matplotlib.figure.Figure`` directly (no pyplot state) and must
read at a glance in the MLflow UI's artifact view: titles name dataset, layout, depth
and instance, axes carry integer ticks (features with their names), and legends are set
in the same size as tick labels. They are cheap on purpose, since a job draws up to
three per model instance: each kind of figure is built once per thread (axes, ticks and
labels cost more than drawing) and then only gets new data and a new title (a mask
shared by several instances is drawn once, and only the title on top of it), margins are
fixed in inches instead of computed by ``tight_layout`` (which draws the figure once
more), and matplotlib is imported with the first figure, not with the job. The cache is
per thread, so jobs in threads never share a figure.
"""

from __future__ import annotations

import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import numpy as np

from flowsweep.structure import Structure

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["save_mask_heatmap", "save_bpd_curve", "save_search_trajectory", "save_curves"]

_DPI = 100
#: Margins in inches: left (y label and ticks), right, bottom (x label and ticks), top (title).
_MARGINS = (0.75, 0.2, 0.6, 0.45)
#: Font sizes (points): title, axis labels, ticks and legends.
_TITLE, _LABEL, _SMALL = 10, 9, 8
#: Share of the data range added above and below curves (matplotlib's default margin).
_PAD = 0.05
#: Inches per feature column and per layer row of a mask heatmap, and per character of
#: a feature name written under it (rotated).
_CELL_W, _CELL_H, _CHAR = 0.2, 0.32, 0.065
#: Inches of a mask heatmap's layer rows at most.
_MAX_ROWS = 8.0

#: Fast PNG compression: a figure's file grows by about a third, its encoding is ~4x cheaper.
_PNG = {"compress_level": 1}

_templates = threading.local()


def _integer_ticks() -> Any:
    """Ticks at whole numbers only: steps and search iterations have no halves."""
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


def _axes(width: float, height: float, margins: Sequence[float] = _MARGINS) -> tuple[Figure, Axes]:
    """A ``width`` x ``height`` inch figure with one axes inside fixed margins."""
    from matplotlib.figure import Figure

    left, right, bottom, top = margins
    fig = Figure(figsize=(width, height), dpi=_DPI)
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height)
    ax = fig.add_subplot()
    ax.locator_params(nbins=5)  # tick labels are most of a small figure's drawing time
    ax.tick_params(labelsize=_SMALL)
    return fig, ax


def _template(key: tuple, build: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """This thread's figure for ``key``, built on first use."""
    cache = _templates.__dict__.setdefault("cache", {})
    if key not in cache:
        cache[key] = build()
    return cache[key]


def _limits(*arrays: np.ndarray) -> tuple[float, float]:
    """Padded range of the finite values (``(0, 1)`` if there are none)."""
    finite = np.concatenate([np.ravel(a)[np.isfinite(np.ravel(a))] for a in arrays])
    if not len(finite):
        return 0.0, 1.0
    low, high = float(finite.min()), float(finite.max())
    pad = _PAD * (high - low) if high > low else 0.5
    return low - pad, high + pad


def save_mask_heatmap(structure: Structure, path: Path, features: Optional[Sequence[str]] = None,
                      title: str = "") -> None:
    """Layers × features image: a dark cell is a feature that conditions the layer's coupling
    (an input of its network, passed through unchanged), a light one is transformed by it.

    ``features`` names the columns (x ticks read ``<index> <name>``); ``title`` names the run.
    """
    d, m, depth = structure.d, structure.m, structure.depth
    names = [f"{j} {n}" for j, n in enumerate(features)] if features is not None else [str(j) for j in range(d)]

    def build() -> dict[str, Any]:
        from matplotlib.patches import Patch

        bottom = 0.45 + _CHAR * max(len(n) for n in names)  # names stand upright under the cells
        margins = (0.75, 0.2, bottom, 0.95)  # the top holds the title and the legend
        rows = min(_CELL_H * depth, _MAX_ROWS)  # a 100-layer flow still fits a screen
        fig, ax = _axes(max(5.5, _CELL_W * d + 1.0), max(2.6, rows + bottom + 0.95), margins)
        image = ax.imshow(np.zeros((depth, d)), cmap="Greys", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
        ax.set_xticks(range(d), names, rotation=90, fontsize=_SMALL if d <= 20 else _SMALL - 2)
        ax.set_yticks(range(depth), [str(l + 1) for l in range(depth)], fontsize=_SMALL if depth <= 25 else 4)
        ax.set_xlabel("feature", fontsize=_LABEL)
        ax.set_ylabel("layer", fontsize=_LABEL)
        legend = [Patch(facecolor="black", edgecolor="grey", label=f"conditions the coupling ({m} per layer)"),
                  Patch(facecolor="white", edgecolor="grey", label=f"transformed ({d - m} per layer)")]
        fig.legend(handles=legend, loc="upper center", bbox_to_anchor=(0.5, 1 - 0.4 / fig.get_figheight()),
                   ncol=2, fontsize=_SMALL, frameon=False)
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        title = fig.suptitle("", fontsize=_TITLE, y=1 - 0.06 / fig.get_figheight(), va="top")
        return {"fig": fig, "canvas": FigureCanvasAgg(fig), "image": image, "title": title}

    figure = _template(("mask", d, m, depth, tuple(names)), build)
    mask = structure.mask()
    key = mask.tobytes()
    fig, canvas = figure["fig"], figure["canvas"]
    if figure.get("drawn") != key:
        # Drawn in full once per structure (without a title); the instances that share it
        # (parity: all of them) only get their title drawn on a copy of those pixels.
        figure["image"].set_data(mask)
        figure["title"].set_text("")
        canvas.draw()
        figure["background"], figure["drawn"] = canvas.copy_from_bbox(fig.bbox), key
    canvas.restore_region(figure["background"])
    figure["title"].set_text(title or f"conditioning features (m={m} of d={d})")
    fig.draw_artist(figure["title"])
    _write_png(canvas, path)


def _write_png(canvas: Any, path: Path) -> None:
    """The canvas's pixels as they are (no new draw) into a PNG file."""
    from PIL import Image  # matplotlib's own PNG writer

    Image.fromarray(np.asarray(canvas.buffer_rgba())).save(path, format="png", **_PNG)


def save_bpd_curve(curve: np.ndarray, path: Path, title: str = "") -> None:
    """Minibatch bpd against SGD step (non-finite points are left out)."""

    def build() -> dict[str, Any]:
        fig, ax = _axes(5.5, 3.6)
        (line,) = ax.plot([], [], lw=0.9)
        ax.set_xlabel("SGD step", fontsize=_LABEL)
        ax.set_ylabel("minibatch bpd", fontsize=_LABEL)
        return {"fig": fig, "ax": ax, "line": line, "title": ax.set_title("", fontsize=_TITLE)}

    figure = _template(("curve",), build)
    steps = np.arange(1, len(curve) + 1)
    finite = np.isfinite(curve)
    figure["line"].set_data(steps[finite], curve[finite])
    figure["ax"].set_xlim(*_limits(steps.astype(float)))
    figure["ax"].set_ylim(*_limits(curve))
    figure["title"].set_text(title)
    figure["fig"].savefig(path, pil_kwargs=_PNG)


def save_search_trajectory(iterations: np.ndarray, values: np.ndarray, best: np.ndarray, path: Path,
                           title: str = "", label: str = "best so far") -> None:
    """Trial values (dots at their iteration, non-finite ones left out) and the search's best per
    iteration (line, named ``label``: a best so far, or each rung's best where rungs differ in fidelity)."""

    def build() -> dict[str, Any]:
        fig, ax = _axes(5.5, 3.6)
        dots = ax.scatter([], [], s=6, alpha=0.5, label="trial")
        (line,) = ax.step([], [], where="post", color="C3", lw=1.4, label=label)
        ax.set_xlabel("search iteration", fontsize=_LABEL)
        ax.xaxis.set_major_locator(_integer_ticks())
        ax.set_ylabel("trial bpd", fontsize=_LABEL)
        ax.legend(fontsize=_SMALL, markerscale=2.5, loc="upper right")
        return {"fig": fig, "ax": ax, "dots": dots, "line": line, "title": ax.set_title("", fontsize=_TITLE)}

    figure = _template(("trajectory", label), build)
    finite = np.isfinite(values)
    figure["dots"].set_offsets(np.column_stack([iterations[finite], values[finite]]))
    t = np.arange(len(best))
    figure["line"].set_data(t, best)
    figure["ax"].set_xlim(*_limits(iterations.astype(float), t.astype(float)))
    figure["ax"].set_ylim(*_limits(values, best))
    figure["title"].set_text(title)
    figure["fig"].savefig(path, pil_kwargs=_PNG)


def save_curves(curves: np.ndarray, path: Path, title: str, xlabel: str, ylabel: str, first_step: int = 0,
                note: str = "") -> None:
    """One line per column of ``curves`` ``[steps, K]`` (a job's instances; all-non-finite
    columns left out), the median in black; ``note`` is set in the upper right corner."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 4.0), dpi=_DPI)  # once per job: no template needed
    ax = fig.add_subplot()
    steps = np.arange(first_step, first_step + len(curves))
    shown = [k for k in range(curves.shape[1]) if np.isfinite(curves[:, k]).any()]
    for k in shown:
        ax.plot(steps, curves[:, k], lw=0.7, alpha=0.6, color=f"C{k % 10}")
    if shown:
        with warnings.catch_warnings():  # a step where no instance is finite has no median: NaN, no gap
            warnings.simplefilter("ignore", RuntimeWarning)
            median = np.nanmedian(np.where(np.isfinite(curves[:, shown]), curves[:, shown], np.nan), axis=1)
        ax.plot(steps, median, lw=1.6, color="black", label=f"median of {len(shown)} instances")
        ax.legend(fontsize=_SMALL, loc="upper right")
        finite = curves[:, shown][np.isfinite(curves[:, shown])]
        low, high = np.quantile(finite, [0.0, 0.98])  # the first steps' bpd would flatten the rest
        if high > low:
            ax.set_ylim(low - _PAD * (high - low), high + _PAD * (high - low))
    if note:
        ax.text(0.01, 0.98, note, transform=ax.transAxes, va="top", fontsize=_SMALL)
    ax.set_xlabel(xlabel, fontsize=_LABEL)
    ax.xaxis.set_major_locator(_integer_ticks())
    ax.set_ylabel(ylabel, fontsize=_LABEL)
    ax.tick_params(labelsize=_SMALL)
    ax.set_title(title, fontsize=_TITLE)
    fig.tight_layout()
    fig.savefig(path, pil_kwargs=_PNG)
