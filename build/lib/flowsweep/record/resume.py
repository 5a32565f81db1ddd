"""Resume: a job whose runs of the very same config already FINISHED is not trained again.

Every run carries a ``fingerprint`` tag, the hash of everything that determines its
numbers (:func:`flowsweep.app.run.fingerprint`). When a sweep dies (a killed process, a lost
node) and the same command is launched again, each job looks its fingerprint up in the
experiment before it creates any run:

- a FINISHED run for every instance: the job is skipped, its return value is the mean
  validation bpd of those runs (:func:`objective_of`), as if it had just run;
- otherwise the runs left by the interrupted attempt end KILLED (RUNNING ones, and
  FINISHED ones of an attempt that died while closing its runs) and the job trains
  again, so nothing finished is duplicated and nothing is left RUNNING.

``rerun=true`` trains again regardless; earlier FINISHED runs then stay as they are.
A RUNNING run of the same fingerprint is taken to be from a dead process: two live
jobs with identical configs in one experiment are a duplicate the user did not intend.
Only instance runs (those with an ``instance`` param) count as a job's results; its
parent run carries the fingerprint too, so that it ends KILLED with the instance runs.
"""

from __future__ import annotations

import logging
import math
from typing import Optional

from mlflow.entities import Run, RunStatus, ViewType
from mlflow.tracking import MlflowClient

from flowsweep.record.names import FINGERPRINT_TAG, objective

__all__ = ["FINGERPRINT_TAG", "runs_of", "objective_of", "resume_job"]

#: Tag that :mod:`flowsweep.app.run` puts on every run.

_FINISHED = RunStatus.to_string(RunStatus.FINISHED)
_RUNNING = RunStatus.to_string(RunStatus.RUNNING)
_KILLED = RunStatus.to_string(RunStatus.KILLED)

log = logging.getLogger(__name__)


def runs_of(client: MlflowClient, experiment_id: str, fingerprint: str) -> list[Run]:
    """Every active run of ``experiment_id`` tagged with ``fingerprint``, oldest first."""
    runs: list[Run] = []
    token: Optional[str] = None
    while True:
        page = client.search_runs(
            [experiment_id], filter_string=f"tags.{FINGERPRINT_TAG} = '{fingerprint}'",
            run_view_type=ViewType.ACTIVE_ONLY, max_results=1000, order_by=["attributes.start_time ASC"],
            page_token=token,
        )  # fmt: skip
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _finished_by_instance(runs: list[Run]) -> dict[int, Run]:
    """The latest FINISHED run of each instance index (runs are oldest first)."""
    return {int(r.data.params["instance"]): r for r in runs
            if r.info.status == _FINISHED and "instance" in r.data.params}


def objective_of(runs: list[Run]) -> float:
    """The job's return value (:func:`flowsweep.record.names.objective`) from its instance runs' metrics."""
    bpd = {split: [r.data.metrics.get(f"{split}_bpd", math.inf) for r in runs] for split in ("train", "val")
           if all(f"{split}_bpd" in r.data.metrics for r in runs)}
    return objective(bpd, [bool(r.data.metrics.get("diverged", 0.0)) for r in runs])


def resume_job(client: MlflowClient, experiment_id: str, fingerprint: str, instances: int,
               rerun: bool = False) -> Optional[list[Run]]:
    """The FINISHED instance runs of an already finished job, by instance (skip it), or
    ``None`` (train it).

    Before returning ``None``, the runs of an interrupted earlier attempt are ended KILLED.
    """
    runs = runs_of(client, experiment_id, fingerprint)
    finished = _finished_by_instance(runs)
    if not rerun and set(finished) >= set(range(instances)):
        done = [finished[i] for i in range(instances)]
        log.info("skipped: this config (fingerprint %s) already has %d FINISHED runs in experiment %s; "
                 "rerun=true trains it again", fingerprint, instances, experiment_id)
        return done
    stale = [r for r in runs if r.info.status == _RUNNING or (r.info.status == _FINISHED and not rerun)]
    for run in stale:
        client.set_terminated(run.info.run_id, _KILLED)
    if stale:
        log.info("marked %d runs of an interrupted earlier attempt (fingerprint %s) KILLED", len(stale), fingerprint)
    return None
