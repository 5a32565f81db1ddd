"""What a user reads when a job or a sweep ends: a few lines per job, a table per sweep.

Both go through :mod:`logging` (logger ``flowsweep``), so the terminal shows them and
Hydra's job log (``main.log`` in the job's output folder) keeps them. A job's lines::

    yeast, layout opt (search evolutionary), depth 2, 20 instances: finished in 41.2 s
      bpd        train -2.913 ± 0.201   val -2.801 ± 0.240   test -2.507 ± 0.382   (mean ± std over 20)
      diverged   0 of 20
      MLflow     run yeast-opt-L2-evolutionary-3f9a1c, experiment 'flowsweep', sweep outputs/2026-12-01/19-40-02
      look       mlflow ui --backend-store-uri sqlite:////home/me/runs/mlflow.db --host 127.0.0.1, then
                 http://127.0.0.1:5000/#/experiments/1/runs?viewStateShareKey=flowsweep&workflowType=machine_learning

A job whose every instance diverged says so in its first line. At the end of a multirun,
:func:`sweep_table` lays the jobs' summaries side by side (see :mod:`flowsweep.app.callbacks`).
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Optional, Sequence
from urllib.parse import urlparse

import numpy as np
from omegaconf import DictConfig

from flowsweep.layouts import build_layout
from flowsweep.record.names import SPLITS
from flowsweep.record.runinfo import dataset_label
from flowsweep.record.tracking import masked
from flowsweep.record.view import runs_page

__all__ = ["SPLITS", "JobSummary", "spread", "of_result", "of_runs", "job_lines", "report", "take_last", "sweep_table"]

log = logging.getLogger("flowsweep")

#: The summary of the last job this process reported, until the sweep's bookkeeping takes it.
_last: Optional[dict[str, Any]] = None


@dataclass
class JobSummary:
    """One job's outcome. ``bpd`` maps a split to ``(mean, std)`` over the instances that did
    not diverge (std with ddof 1, NaN for one instance); it is empty when all diverged."""

    dataset: str
    layout: str
    search: Optional[str]
    depth: int
    instances: int
    diverged: int
    wall_time_s: float
    experiment: str
    uri: str
    sweep_id: str
    run_name: str
    objective: float
    bpd: dict[str, tuple[float, float]] = field(default_factory=dict)
    skipped: bool = False
    experiment_id: str = ""

    @property
    def all_diverged(self) -> bool:
        return self.diverged == self.instances


def spread(values: Sequence[float]) -> tuple[float, float]:
    """``(mean, std)`` of the finite ``values`` (std with ddof 1: NaN for fewer than two)."""
    finite = np.asarray([v for v in values if math.isfinite(v)], dtype=float)
    if not len(finite):
        return math.nan, math.nan
    return float(finite.mean()), float(finite.std(ddof=1)) if len(finite) > 1 else math.nan


def of_result(cfg: DictConfig, result: Mapping[str, Any], objective: float, uri: str, run_name: str, sweep_id: str,
              skipped: bool = False, experiment_id: str = "") -> JobSummary:
    """The summary of a job from its result: ``{split}_bpd`` and ``diverged`` per instance, ``wall_time_s``."""
    converged = ~np.asarray(result["diverged"], dtype=bool)
    return JobSummary(
        dataset=dataset_label(cfg), layout=str(cfg.layout.name),
        search=str(cfg.search.name) if build_layout(cfg.layout).searches else None, depth=int(cfg.depth.layers),
        instances=int(cfg.instances), diverged=int((~converged).sum()), wall_time_s=float(result["wall_time_s"]),
        experiment=str(cfg.tracking.experiment), uri=uri, sweep_id=sweep_id, run_name=run_name, objective=objective,
        skipped=skipped, experiment_id=experiment_id,
        bpd={split: spread(np.asarray(result[f"{split}_bpd"])[converged]) for split in SPLITS
             if f"{split}_bpd" in result and converged.any()},
    )


def of_runs(cfg: DictConfig, metrics: Sequence[Mapping[str, float]], objective: float, **where: str) -> JobSummary:
    """A skipped job's summary, from the metrics of its FINISHED instance runs."""
    result: dict[str, Any] = {key: [m.get(key, math.inf) for m in metrics] for key in (f"{s}_bpd" for s in SPLITS)
                              if all(key in m for m in metrics)}
    result["diverged"] = [bool(m.get("diverged", 0.0)) for m in metrics]
    result["wall_time_s"] = max(m.get("wall_time_s", 0.0) for m in metrics)
    return of_result(cfg, result, objective, skipped=True, **where)


def _look(uri: str, experiment_id: str) -> str:
    # flowsweep's shared view of the runs table (best job first, the bpd columns), not MLflow's GenAI view.
    page = runs_page(experiment_id) if experiment_id else ""
    if urlparse(uri).scheme in ("http", "https"):
        return f"open {masked(uri).rstrip('/')}/{page} in a browser"
    return f"mlflow ui --backend-store-uri {masked(uri)} --host 127.0.0.1, then http://127.0.0.1:5000/{page}"


def _pm(mean: float, std: float) -> str:
    return f"{mean:.3f}" if math.isnan(std) else f"{mean:.3f} ± {std:.3f}"


def job_lines(summary: JobSummary) -> list[str]:
    """The lines :func:`report` logs for a job."""
    what = f"{summary.dataset}, layout {summary.layout}"
    if summary.search:
        what += f" (search {summary.search})"
    what += f", depth {summary.depth}, {summary.instances} instances"
    if summary.skipped:
        outcome = f"skipped: its runs already FINISHED in experiment '{summary.experiment}' (rerun=true trains again)"
    elif summary.all_diverged:
        outcome = f"ALL {summary.instances} INSTANCES DIVERGED (non-finite loss or parameters), {summary.wall_time_s:.1f} s"
    else:
        outcome = f"finished in {summary.wall_time_s:.1f} s"
    lines = [f"{what}: {outcome}"]
    if summary.bpd:
        converged = summary.instances - summary.diverged
        cells = "   ".join(f"{split} {_pm(*summary.bpd[split])}" for split in SPLITS if split in summary.bpd)
        lines.append(f"  bpd        {cells}   (mean ± std over {converged})")
    lines.append(f"  diverged   {summary.diverged} of {summary.instances}")
    lines.append(f"  MLflow     run {summary.run_name}, experiment '{summary.experiment}', sweep {summary.sweep_id}")
    lines.append(f"  look       {_look(summary.uri, summary.experiment_id)}")
    return lines


def report(summary: JobSummary) -> None:
    """Log the job's lines (a warning when every instance diverged) and keep them for the sweep's table."""
    global _last
    log.log(logging.WARNING if summary.all_diverged else logging.INFO, "\n".join(job_lines(summary)))
    _last = asdict(summary)


def take_last() -> Optional[dict[str, Any]]:
    """The last reported summary (as a dict), forgotten once taken."""
    global _last
    taken, _last = _last, None
    return taken


def _cell(summary: Mapping[str, Any], split: str) -> str:
    mean, std = summary["bpd"].get(split, (math.nan, math.nan))
    return "" if math.isnan(mean) else _pm(mean, std)


def _shown(override: str) -> str:
    """``depth=2`` as the user typed it (flowsweep.config.overrides quoted it for Hydra), and an
    Optuna draw such as ``train.max_lr=0.0013161769981125955`` to 4 significant digits."""
    override = re.sub(r"^([\w.]+)='([^',]*)'$", r"\1=\2", override)
    key, _, value = override.partition("=")
    if re.fullmatch(r"-?\d*\.\d{5,}(e-?\d+)?|-?\d+(\.\d+)?e-?\d+", value):
        return f"{key}={float(value):.4g}"
    return override


def _objective(summary: Optional[Mapping[str, Any]]) -> float:
    """What a sweeper minimises (:func:`flowsweep.record.names.objective`): the val bpd mean, else train's."""
    if not summary or summary["skipped"] or summary["diverged"] == summary["instances"]:
        return math.inf
    for split in ("val", "train"):
        mean = summary["bpd"].get(split, (math.nan, math.nan))[0]
        if not math.isnan(mean):
            return float(mean)
    return math.inf


def sweep_table(records: Sequence[Mapping[str, Any]], title: str) -> str:
    """One row per job record (``num``, ``overrides``, ``status``, ``summary``): the overrides that
    set the job apart, its outcome, bpd mean ± std per split, diverged instances and wall time;
    the job with the lowest objective (the val bpd mean) is marked ``*``."""
    from tabulate import tabulate

    shared = set.intersection(*(set(r["overrides"]) for r in records)) if len(records) > 1 else set()
    objectives = [_objective(r.get("summary")) for r in records]
    best = min(range(len(records)), key=objectives.__getitem__) if len(records) > 1 else None
    if best is not None and not math.isfinite(objectives[best]):
        best = None
    rows = []
    for n, record in enumerate(records):
        summary = record.get("summary")
        # depth='2' as the user typed it: depth=2 (flowsweep.config.overrides quoted it for Hydra)
        which = " ".join(_shown(o) for o in record["overrides"] if o not in shared) or "(no overrides)"
        if summary is None:
            rows.append([record["num"], which, record["status"].lower(), "", "", "", "", ""])
            continue
        status = "skipped" if summary["skipped"] else "all diverged" if summary["diverged"] == summary["instances"] \
            else record["status"].lower()
        rows.append([f"{record['num']} *" if n == best else record["num"], which, status,
                     *(_cell(summary, s) for s in SPLITS),
                     f"{summary['diverged']}/{summary['instances']}", f"{summary['wall_time_s']:.1f}"])
    table = tabulate(rows, headers=["#", "job", "status", "train bpd", "val bpd", "test bpd", "diverged", "wall s"],
                     tablefmt="simple", disable_numparse=True)
    note = "\n* the lowest val bpd mean (train where no validation split): what a sweeper minimises" \
        if best is not None else ""
    return f"{title}\n{table}{note}"
