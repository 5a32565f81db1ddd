"""Small PNG figures logged with every run: masks, bpd curves, search trajectories.

Figures are built on ``matplotlib.figure.Figure`` directly (no pyplot state), so
jobs in threads or workers never share a current figure.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from flowsweep.structure import Structure

__all__ = ["save_mask_heatmap", "save_bpd_curve", "save_search_trajectory"]

_DPI = 80


def save_mask_heatmap(structure: Structure, path: Path) -> None:
    """Layers × features image: dark cells condition the layer, light ones are transformed."""
    fig = Figure(figsize=(max(3.0, 0.25 * structure.d + 1.5), max(2.0, 0.3 * structure.depth + 1.0)), dpi=_DPI)
    ax = fig.add_subplot()
    ax.imshow(structure.mask(), cmap="Greys", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
    ax.set_xlabel("feature")
    ax.set_ylabel("layer")
    ax.set_yticks(range(structure.depth), [str(l + 1) for l in range(structure.depth)])
    ax.set_title(f"conditioning features (m={structure.m} of d={structure.d})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)


def save_bpd_curve(curve: np.ndarray, path: Path, title: str = "") -> None:
    """Minibatch bpd against SGD step (non-finite points are left out)."""
    fig = Figure(figsize=(4.5, 3.0), dpi=_DPI)
    ax = fig.add_subplot()
    steps = np.arange(1, len(curve) + 1)
    finite = np.isfinite(curve)
    ax.plot(steps[finite], curve[finite], lw=0.8)
    ax.set_xlabel("SGD step")
    ax.set_ylabel("minibatch bpd")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)


def save_search_trajectory(iterations: np.ndarray, values: np.ndarray, best: np.ndarray, path: Path,
                           title: str = "") -> None:
    """Trial values (dots at their iteration, non-finite ones left out) and best-so-far per iteration (line)."""
    fig = Figure(figsize=(4.5, 3.0), dpi=_DPI)
    ax = fig.add_subplot()
    finite = np.isfinite(values)
    ax.scatter(iterations[finite], values[finite], s=4, alpha=0.5, label="trial")
    ax.step(np.arange(len(best)), best, where="post", color="C3", lw=1.2, label="best so far")
    ax.set_xlabel("iteration")
    ax.set_ylabel("trial bpd")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
