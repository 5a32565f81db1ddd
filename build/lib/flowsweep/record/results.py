"""A job's results into its MLflow runs: the curve while it trains, every instance's numbers
and figures, and the job's aggregates on its parent run.

Instance runs get ``batch_bpd`` (the minibatch bpd of every k-th SGD step, at most
``tracking.curve_points`` points: MLflow writes each point in tens of microseconds, and
the job's ``bpd_curves.png`` smooths every step; :class:`LiveCurve` writes it while training
goes on), ``train_bpd``/``val_bpd``/``test_bpd`` (``inf`` for a diverged instance),
``diverged``, ``num_params``, a one-line description (``mlflow.note.content``), wall times,
``final_model_steps`` (the final model's training) and ``model_steps`` (every model-step of
the instance, its search's included), ``pair_coverage``, the search metrics of ``layout=opt``
(``search_best_bpd`` per iteration, or ``search_iteration_best_bpd`` where rungs differ in
fidelity, counts and ``search_model_steps``; every trial is in ``search_trials.json``),
``dependency_recall`` on data with planted dependencies, the ``val_bpd_curve`` of the
validation evaluations, and the artifacts ``masks.json`` (and ``search_trials.json``;
``dependence.json`` where the features' estimated dependence built or started the
structure). The parent run gets the mean and std of each bpd over the instances that did
not diverge (``train_bpd_mean`` ...), how many did (``diverged_count``), the wall times,
the summary as its description and ``summary.txt``, and one figure of each kind for all
its instances (:mod:`flowsweep.record.plots`, drawn by the writer process beside the job):
``bpd_curves.png`` (training, and validation beside it), ``masks.png`` (every distinct
structure) and, for a search, ``search_best.png``.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from torch import Tensor

from flowsweep.record import plots
from flowsweep.data import Dataset
from flowsweep.structure.dependence import Dependence
from flowsweep.structure.graph import dependency_recall
from flowsweep.record.run_group import DIVERGED_TAG, JOB, RunGroup
from flowsweep.search import StructureOptimizer
from flowsweep.search.job import JobSearch
from flowsweep.structure import MASKS_ARTIFACT, Structure
from flowsweep.record.names import SPLITS
from flowsweep.record.summary import JobSummary, job_lines
from flowsweep.training import nats_to_bpd

__all__ = ["LiveCurve", "best_metric", "search_steps", "log_search_metrics", "log_instances", "log_job"]

#: MLflow's system tag for a run's description (shown on the run's page).
_DESCRIPTION = "mlflow.note.content"


class LiveCurve:
    """``on_progress`` of :func:`flowsweep.training.train`: every ``interval_s`` seconds the
    minibatch bpd of the steps done so far goes to the instance runs (every ``stride``-th
    step: steps 1, 1 + stride, ...), so a running job's ``batch_bpd`` grows in the MLflow UI.
    :meth:`finish` buffers the rest for the runs."""

    def __init__(self, runs: RunGroup, d: int, log_det: float, interval_s: float, stride: int):
        self.runs, self.d, self.log_det, self.interval_s, self.stride = runs, d, log_det, interval_s, stride
        self.next = 0  # index (0-based step) of the next point to send
        self._due = time.monotonic() + interval_s

    def __call__(self, steps: int, curve: Tensor) -> None:
        """``curve`` ``[>= steps, K]`` holds the NLL (nats) of the first ``steps`` steps."""
        if time.monotonic() < self._due:
            return
        index = np.arange(self.next, steps, self.stride)
        # The same arithmetic as the final curve's, so the points equal it bit for bit.
        self._add(index, nats_to_bpd(curve[index], self.d, self.log_det).numpy())
        for i in range(curve.shape[1]):
            self.runs.send(i)
        self._due = time.monotonic() + self.interval_s

    def _add(self, index: np.ndarray, bpd: np.ndarray) -> None:
        if not len(index):
            return
        for i in range(bpd.shape[1]):
            self.runs.curve(i, "batch_bpd", bpd[:, i], first_step=int(index[0]) + 1, stride=self.stride)
        self.next = int(index[-1]) + self.stride

    def finish(self, curve: np.ndarray) -> None:
        """The whole curve in bpd ``[steps, K]``: the points not sent yet are buffered for the runs."""
        index = np.arange(self.next, len(curve), self.stride)
        self._add(index, curve[index])


def best_metric(optimizer: StructureOptimizer) -> tuple[str, str]:
    """The metric name and figure label of ``optimizer``'s :attr:`best_trace`: ``search_best_bpd``,
    the best so far, where every trial has one fidelity; ``search_iteration_best_bpd``, the best
    of each iteration, where iterations train for different lengths (halving's rungs), whose
    values are not comparable."""
    if type(optimizer).one_fidelity:
        return "search_best_bpd", "best so far"
    return "search_iteration_best_bpd", "best of each rung"


def search_steps(search: JobSearch, i: int) -> int:
    """Model-steps instance ``i``'s search spent besides its final model's own training."""
    final = search.outcome.finals[i]
    return search.outcome.model_steps[i] - (final.steps if final is not None else 0)


def log_search_metrics(runs: RunGroup, search: JobSearch) -> None:
    """The search's best at step = iteration t (:func:`best_metric`) and its counts, sent at once:
    they are written while the job trains on. Every trial (value, state, acceptance) goes to
    ``search_trials.json`` instead of metric points: a grid's searches hold 10^5 trials.
    ``search_model_steps`` counts every model-step of the search but the final model's own."""
    search_time = search.outcome.seconds
    for i, optimizer in enumerate(search.optimizers):
        trials = optimizer.history
        finite = [t for t in trials if math.isfinite(t.value)]
        name, _ = best_metric(optimizer)
        for t, best in enumerate(optimizer.best_trace):
            if math.isfinite(best):
                runs.metric(i, name, best, step=t)
        runs.metric(i, "search_time_s", search_time)
        runs.metric(i, "search_trials", len(trials))
        runs.metric(i, "search_diverged_trials", len(trials) - len(finite))
        runs.metric(i, "search_model_steps", search_steps(search, i))
        runs.send(i)
    runs.metric(JOB, "search_time_s", search_time)


#: An instance's final bpd per split, in the order its description names them.
SPLIT_KEYS = tuple(f"{split}_bpd" for split in ("val", "test", "train"))


def _instance_line(i: int, title: str, diverged: bool, bpd: dict) -> str:
    """The instance's one-line description (the runs table's Description column), e.g.
    ``instance 3 of yeast · parity · depth 2: val -2.310, test -2.291, train -2.402 bpd``."""
    if diverged:
        return f"instance {i} of {title}: DIVERGED (non-finite loss or parameters)"
    return f"instance {i} of {title}: " + ", ".join(f"{k[:-4]} {v:.3f}" for k, v in bpd.items()) + " bpd"


def log_instances(runs: RunGroup, structures: Sequence[Structure], result: dict, data: Dataset,
                  title: str, search: Optional[JobSearch], dependence: Optional[Dependence]) -> None:
    """Metrics and artifacts of every instance run; ``title`` names the job in descriptions."""
    for i, structure in enumerate(structures):
        diverged = bool(result["diverged"][i])
        for key in ("train_bpd", "val_bpd", "test_bpd"):
            if key in result:
                runs.metric(i, key, math.inf if diverged else result[key][i])
        runs.metric(i, "diverged", float(diverged))
        runs.tag(i, _DESCRIPTION, _instance_line(i, title, diverged, {k: result[k][i] for k in SPLIT_KEYS if k in result}))
        runs.metric(i, "num_params", result["num_params"])
        runs.metric(i, "wall_time_s", result["wall_time_s"])
        runs.metric(i, "train_time_s", result["train_time_s"])
        # Every model-step of the instance: its final model's training and, for layout=opt, its search's.
        final_steps = int(result["model_steps"][i])
        runs.metric(i, "final_model_steps", final_steps)
        runs.metric(i, "model_steps", final_steps + (search_steps(search, i) if search is not None else 0))
        runs.metric(i, "pair_coverage", structure.pair_coverage())
        if data.graph:
            runs.metric(i, "dependency_recall", dependency_recall(structure, data.graph))
        for step, value in zip(result["val_steps"], result["val_curve"][:, i]):
            if math.isfinite(value):
                runs.metric(i, "val_bpd_curve", value, step=step)
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            (folder / MASKS_ARTIFACT).write_text(json.dumps(structure.to_dict(), indent=1))
            if dependence is not None:  # what the data-driven layout or search started from
                (folder / "dependence.json").write_text(json.dumps(np.round(dependence.weight, 5).tolist()))
            if search is not None:  # every trial (diverged ones too)
                trials = search.optimizers[i].history
                (folder / "search_trials.json").write_text(json.dumps([t.to_dict() for t in trials]))
            runs.artifacts(i, tmp)


#: Points per instance of the job's training curves figure at most (the moving mean is
#: taken over every step first): a figure's data is encoded and sent to the writer process.
_FIGURE_POINTS = 600


def _job_figures(runs: RunGroup, structures: Sequence[Structure], result: dict, features: Sequence[str],
                 title: str, optimizer: str, search: Optional[JobSearch], note: str) -> None:
    """The parent run's figures (:mod:`flowsweep.record.plots`), drawn by the writer process."""
    converged = ~result["diverged"]
    curve = result["curve"][:, converged]
    n = int(converged.sum())
    if n:
        window = max(1, len(curve) // 50)
        stride = max(1, -(-len(curve) // _FIGURE_POINTS))
        index = np.arange(0, len(curve), stride)
        val = {}
        if len(result["val_steps"]):
            val = {"val_steps": [int(s) for s in result["val_steps"]],
                   "val": _rounded(result["val_curve"][:, converged])}
        runs.figure(JOB, "bpd_curves.png", plots.job_curves, steps=(index + 1).tolist(),
                    raw=_rounded(curve[index]), smooth=_rounded(plots.smoothed(curve, window)[index]),
                    window=window, optimizer=optimizer, title=f"{title}: bpd", note=note, **val)
    groups: dict[bytes, list[int]] = {}
    masks: dict[bytes, list] = {}
    for i, structure in enumerate(structures):
        mask = structure.mask()
        groups.setdefault(mask.tobytes(), []).append(i)
        masks.setdefault(mask.tobytes(), mask.astype(int).tolist())
    runs.figure(JOB, "masks.png", plots.job_masks, masks=list(masks.values()), groups=list(groups.values()),
                features=list(features), m=structures[0].m, title=title)
    if search is not None and n:
        traces = [np.asarray(o.best_trace, dtype=float) for o in search.optimizers]
        best = np.full((max(map(len, traces)), len(traces)), np.nan)  # a search may stop early (patience)
        for k, trace in enumerate(traces):
            best[:len(trace), k] = trace
        runs.figure(JOB, "search_best.png", plots.job_search, best=_rounded(best[:, converged]),
                    label=best_metric(search.optimizers[0])[1], title=title, note=note)  # one class per job


def _rounded(values: np.ndarray) -> list:
    """Values for a figure: 4 decimals of a bpd are more than a figure shows (and encode faster)."""
    return np.round(values.astype(float), 4).tolist()


def log_job(runs: RunGroup, summary: JobSummary, result: dict, title: str, search: Optional[JobSearch],
            structures: Sequence[Structure], features: Sequence[str], optimizer: str) -> None:
    """The parent run's aggregates, description and figures; ``optimizer`` names the training
    steps on the figures' axes (``Adam, cosine rate``)."""
    for split in SPLITS:
        if split in summary.bpd:
            mean, std = summary.bpd[split]
            runs.metric(JOB, f"{split}_bpd_mean", mean)
            if not math.isnan(std):
                runs.metric(JOB, f"{split}_bpd_std", std)
    runs.metric(JOB, "diverged_count", summary.diverged)  # not "diverged": that is an instance's 0 or 1
    runs.metric(JOB, "instances", summary.instances)
    runs.metric(JOB, "wall_time_s", result["wall_time_s"])
    runs.metric(JOB, "train_time_s", result["train_time_s"])
    runs.tag(JOB, _DESCRIPTION, "\n".join(job_lines(summary)))
    if summary.all_diverged:  # the job fails, but the analysis still counts these instances as diverged
        for run in (JOB, *range(summary.instances)):
            runs.tag(run, DIVERGED_TAG, "true")
    note = f"{summary.diverged} diverged instance(s) left out" if summary.diverged else ""
    _job_figures(runs, structures, result, features, title, optimizer, search, note)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "summary.txt").write_text("\n".join(job_lines(summary)) + "\n")
        runs.artifacts(JOB, tmp)
