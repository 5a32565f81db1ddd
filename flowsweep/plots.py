"""Small PNG figures logged with every run: masks, bpd curves, search trajectories.

Figures are built on ``matplotlib.figure.Figure`` directly (no pyplot state). They are
cheap on purpose, since a job draws up to three per model instance: each kind of
figure is built once per thread (axes, ticks and labels cost more than drawing) and
then only gets new data, margins are fixed in inches instead of computed by
``tight_layout`` (which draws the figure once more), and matplotlib is imported with the
first figure, not with the job. The cache is per thread, so jobs in threads never share
a figure.
"""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from flowsweep.structure import Structure

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["save_mask_heatmap", "save_bpd_curve", "save_search_trajectory"]

_DPI = 80
#: Margins in inches: left (y label and ticks), right, bottom (x label and ticks), top (title).
_MARGINS = (0.65, 0.15, 0.5, 0.3)
#: Share of the data range added above and below curves (matplotlib's default margin).
_PAD = 0.05
#: Mask images kept per thread (drawn once, written again for every run with that structure).
_MASKS_KEPT = 64

#: Fast PNG compression: a figure's file grows by about a third, its encoding is ~4x cheaper.
_PNG = {"compress_level": 1}

_templates = threading.local()


def _axes(width: float, height: float) -> tuple[Figure, Axes]:
    """A ``width`` x ``height`` inch figure with one axes inside fixed margins."""
    from matplotlib.figure import Figure

    left, right, bottom, top = _MARGINS
    fig = Figure(figsize=(width, height), dpi=_DPI)
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height)
    ax = fig.add_subplot()
    ax.locator_params(nbins=4)  # tick labels are most of a small figure's drawing time
    return fig, ax


def _template(key: tuple, build: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """This thread's figure for ``key``, built on first use."""
    cache = _templates.__dict__.setdefault("cache", {})
    if key not in cache:
        cache[key] = build()
    return cache[key]


def _limits(*arrays: np.ndarray) -> tuple[float, float]:
    """Padded range of the finite values (``(0, 1)`` if there are none)."""
    finite = np.concatenate([a[np.isfinite(a)] for a in arrays])
    if not len(finite):
        return 0.0, 1.0
    low, high = float(finite.min()), float(finite.max())
    pad = _PAD * (high - low) if high > low else 0.5
    return low - pad, high + pad


def save_mask_heatmap(structure: Structure, path: Path) -> None:
    """Layers × features image: dark cells condition the layer, light ones are transformed."""
    d, m, depth = structure.d, structure.m, structure.depth

    def build() -> dict[str, Any]:
        fig, ax = _axes(max(3.5, 0.25 * d + 1.5), max(2.0, 0.3 * depth + 1.0))
        image = ax.imshow(np.zeros((depth, d)), cmap="Greys", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
        ax.set_xlabel("feature")
        ax.set_ylabel("layer")
        ax.set_yticks(range(depth), [str(l + 1) for l in range(depth)])
        ax.set_title(f"conditioning features (m={m} of d={d})", fontsize=9)
        return {"fig": fig, "image": image}

    # Instances often share a structure (parity: all of them): each is drawn once per thread.
    drawn = _templates.__dict__.setdefault("masks", {})
    mask = structure.mask()
    key = (d, m, depth, mask.tobytes())
    if key not in drawn:
        figure = _template(("mask", d, m, depth), build)
        figure["image"].set_data(mask)
        buffer = io.BytesIO()
        figure["fig"].savefig(buffer, format="png", pil_kwargs=_PNG)
        if len(drawn) >= _MASKS_KEPT:
            drawn.pop(next(iter(drawn)))
        drawn[key] = buffer.getvalue()
    Path(path).write_bytes(drawn[key])


def save_bpd_curve(curve: np.ndarray, path: Path, title: str = "") -> None:
    """Minibatch bpd against SGD step (non-finite points are left out)."""

    def build() -> dict[str, Any]:
        fig, ax = _axes(4.5, 3.0)
        (line,) = ax.plot([], [], lw=0.8)
        ax.set_xlabel("SGD step")
        ax.set_ylabel("minibatch bpd")
        return {"fig": fig, "ax": ax, "line": line, "title": ax.set_title("", fontsize=9)}

    figure = _template(("curve",), build)
    steps = np.arange(1, len(curve) + 1)
    finite = np.isfinite(curve)
    figure["line"].set_data(steps[finite], curve[finite])
    figure["ax"].set_xlim(*_limits(steps.astype(float)))
    figure["ax"].set_ylim(*_limits(curve))
    figure["title"].set_text(title)
    figure["fig"].savefig(path, pil_kwargs=_PNG)


def save_search_trajectory(iterations: np.ndarray, values: np.ndarray, best: np.ndarray, path: Path,
                           title: str = "") -> None:
    """Trial values (dots at their iteration, non-finite ones left out) and best-so-far per iteration (line)."""

    def build() -> dict[str, Any]:
        fig, ax = _axes(4.5, 3.0)
        dots = ax.scatter([], [], s=4, alpha=0.5, label="trial")
        (line,) = ax.step([], [], where="post", color="C3", lw=1.2, label="best so far")
        ax.set_xlabel("iteration")
        ax.set_ylabel("trial bpd")
        ax.legend(fontsize=7)
        return {"fig": fig, "ax": ax, "dots": dots, "line": line, "title": ax.set_title("", fontsize=9)}

    figure = _template(("trajectory",), build)
    finite = np.isfinite(values)
    figure["dots"].set_offsets(np.column_stack([iterations[finite], values[finite]]))
    t = np.arange(len(best))
    figure["line"].set_data(t, best)
    figure["ax"].set_xlim(*_limits(iterations.astype(float), t.astype(float)))
    figure["ax"].set_ylim(*_limits(values, best))
    figure["title"].set_text(title)
    figure["fig"].savefig(path, pil_kwargs=_PNG)
