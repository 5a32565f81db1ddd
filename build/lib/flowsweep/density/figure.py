"""``samples.png`` on a job's parent run: what its best model learned, against held-out rows.

The best instance by validation bpd draws as many rows as the test split holds (at most
:data:`ROWS`), in raw units, and the figure sets them beside the test rows: on top the
:data:`PAIRS` most dependent pairs of features (by absolute Spearman correlation of the test
rows) as scatter plots, below each of their features' marginal as two histograms. A model that
learned the table's dependence puts its samples where the held-out rows lie.

The job hands over plain values (:func:`figure_data`); :func:`draw_samples` draws them in the
job's MLflow writer process (:mod:`flowsweep.record.figures`), beside the job: each shape of
figure is built once there.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from flowsweep.data import Dataset
from flowsweep.density.estimator import TrainedDensity
from flowsweep.density.format import SavedDensity
from flowsweep.density.log import best_instance
from flowsweep.model import CouplingFlows
from flowsweep.record.figures import figure
from flowsweep.record.run_group import JOB, RunGroup
from flowsweep.training import torch_threads

__all__ = ["FIGURE", "PAIRS", "ROWS", "most_dependent_pairs", "figure_data", "draw_samples", "log_samples_figure"]

#: The file on the parent run.
FIGURE = "samples.png"
#: Pairs of features shown, and rows drawn (of the model and of the test split) at most.
PAIRS, ROWS = 3, 1000
_COLOURS = {"held-out rows": "#1f77b4", "model samples": "#d62728"}
_templates = threading.local()  # per thread: jobs in threads never share a figure


def most_dependent_pairs(rows: np.ndarray, k: int = PAIRS) -> list[tuple[int, int]]:
    """The ``k`` pairs ``(i, j)``, ``i < j``, of columns of ``rows`` ``[n, d]`` with the largest
    absolute Spearman correlation, the strongest first (a constant column correlates with none)."""
    d = rows.shape[1]
    ranks = rows.argsort(0).argsort(0).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.nan_to_num(np.abs(np.corrcoef(ranks, rowvar=False)).reshape(d, d), nan=0.0)
    i, j = np.triu_indices(d, 1)
    order = np.argsort(-rho[i, j], kind="stable")[:k]
    return [(int(i[o]), int(j[o])) for o in order]


def _raw(data: Dataset, rows: torch.Tensor) -> np.ndarray:
    for step in reversed(data.maps):
        rows = step.invert(rows)
    return rows.double().numpy()


def figure_data(flow: CouplingFlows, instance: int, data: Dataset, title: str, seed: int) -> Optional[dict[str, Any]]:
    """The figure's values (plain lists) for instance ``instance`` of the job's trained ``flow``;
    ``None`` where there are no test rows to compare with."""
    if not len(data.test) or data.d < 2:
        return None
    generator = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(data.test), generator=generator)[:ROWS]
    held_out = _raw(data, data.test[pick])
    saved = SavedDensity(columns=data.columns, spec=flow.spec, structure=flow.structures[instance],
                         theta=flow.theta[instance].detach().numpy().copy(), maps=data.maps)
    with torch_threads(1):  # a thousand rows: a second thread only adds its start-up
        samples = TrainedDensity(saved).sample(len(held_out), random_state=seed).to_numpy()
    samples = samples[np.isfinite(samples).all(1)]
    pairs = most_dependent_pairs(held_out)
    features = sorted({f for pair in pairs for f in pair})
    return {"columns": list(data.columns), "pairs": pairs, "features": features,
            "held_out": held_out[:, features].tolist(), "samples": samples[:, features].tolist(),
            "title": f"{title} · best instance {instance}: samples and held-out rows"}


def _template(n_pairs: int, n_features: int) -> dict[str, Any]:
    """This thread's figure for a shape, built on first use: axes, ticks and labels cost more
    than drawing, so later figures only get new data, limits, labels and title."""
    key = (n_pairs, n_features)
    cache = _templates.__dict__.setdefault("cache", {})
    if key in cache:
        return cache[key]
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    width = max(n_pairs, 3)
    rows = 1 + -(-n_features // width)
    fig = Figure(figsize=(3.0 * width, 2.6 * rows + 0.5), dpi=100)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.08, top=1 - 0.55 / fig.get_figheight(), wspace=0.3, hspace=0.45)
    grid = fig.add_gridspec(rows, width)
    scatters, marginals = [], []
    for n in range(n_pairs):
        ax = fig.add_subplot(grid[0, n])
        ax.tick_params(labelsize=7)
        ax.locator_params(nbins=5)
        dots = {label: ax.scatter([], [], s=3, alpha=0.4, lw=0, c=colour, label=label) for label, colour in _COLOURS.items()}
        if n == 0:
            ax.legend(fontsize=7, markerscale=3, loc="upper left")
        scatters.append((ax, dots))
    for n in range(n_features):
        ax = fig.add_subplot(grid[1 + n // width, n % width])
        ax.tick_params(labelsize=7)
        ax.locator_params(axis="x", nbins=5)
        ax.set_yticks([])
        steps = {label: ax.stairs([0.0], [0.0, 1.0], color=colour) for label, colour in _COLOURS.items()}
        marginals.append((ax, steps))
    cache[key] = {"canvas": FigureCanvasAgg(fig), "title": fig.suptitle("", fontsize=10), "scatters": scatters,
                  "marginals": marginals}
    return cache[key]


@figure
def draw_samples(path: Path, columns: Sequence[str], pairs: Sequence[Sequence[int]], features: Sequence[int],
                 held_out: list, samples: list, title: str) -> None:
    """Draw the figure of :func:`figure_data`'s values into ``path``."""
    x, y = np.asarray(held_out, dtype=float), np.asarray(samples, dtype=float).reshape(-1, len(features))
    values = {"held-out rows": x, "model samples": y}
    where = {f: k for k, f in enumerate(features)}
    # The held-out rows set each axis, so that a few far samples do not squash the view.
    low, high = np.percentile(x, [0.5, 99.5], axis=0)
    pad = np.where(high > low, 0.1 * (high - low), 0.5)
    limits = {f: (low[k] - pad[k], high[k] + pad[k]) for f, k in where.items()}
    figure = _template(len(pairs), len(features))
    for (ax, dots), (i, j) in zip(figure["scatters"], pairs):
        for label, dot in dots.items():
            dot.set_offsets(values[label][:, [where[i], where[j]]])
        ax.set_xlim(limits[i])
        ax.set_ylim(limits[j])
        ax.set_xlabel(columns[i], fontsize=9)
        ax.set_ylabel(columns[j], fontsize=9)
    for (ax, steps), f in zip(figure["marginals"], features):
        edges = np.linspace(*limits[f], 31)
        top = 0.0
        for label, step in steps.items():
            counts, _ = np.histogram(values[label][:, where[f]], bins=edges, density=True)
            step.set_data(counts, edges)
            top = max(top, float(counts.max()) if len(counts) else 0.0)
        ax.set_xlim(limits[f])
        ax.set_ylim(0, 1.05 * top or 1.0)
        ax.set_xlabel(columns[f], fontsize=9)
    figure["title"].set_text(title)
    figure["canvas"].print_png(str(path), pil_kwargs={"compress_level": 1})


def log_samples_figure(runs: RunGroup, result: dict, data: Dataset, title: str, seeds: Sequence[int]) -> None:
    """Draw the figure of the job's best instance (by validation bpd) onto its parent run."""
    best = best_instance(result)
    values = None if best is None else figure_data(result["flow"], best, data, title, seeds[best])
    if values is None:
        return
    runs.figure(JOB, FIGURE, draw_samples, **values)  # drawn by the writer process, beside the job
