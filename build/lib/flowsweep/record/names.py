"""Names the record shares across processes and modules: environment variables, tags, the
splits and the objective a job returns.

A leaf module without imports of flowsweep, so the Hydra callbacks can read it without
loading MLflow, and the analysis reads the same names the jobs write.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

__all__ = ["SWEEP_ID_ENV", "SWEEP_ID_TAG", "SWEEPER_TAG", "STUDY_TAG", "TRIAL_TAG", "FINGERPRINT_TAG", "SPLITS",
           "objective"]

#: Set by :class:`~flowsweep.app.callbacks.TrackingCallback` in the launching process; jobs (and
#: their workers) inherit it, so every run of one sweep carries one sweep id.
SWEEP_ID_ENV = "FLOWSWEEP_SWEEP_ID"
#: Every run of one multirun carries this tag with the sweep's id.
SWEEP_ID_TAG = "sweep_id"
#: What made the run's job: ``grid`` (Hydra's basic sweeper), ``optuna`` (a study's trial), or
#: ``run`` (no multirun). The analysis keeps a study's trials out of a grid's cells.
SWEEPER_TAG = "flowsweep.sweeper"
#: An Optuna trial's study name and its number in the study (which goes on across resumed launches).
STUDY_TAG, TRIAL_TAG = "optuna.study", "optuna.trial"
#: A hash of the config that decides a job's numbers (flowsweep.app.run.fingerprint): resume finds
#: a finished job by it.
FINGERPRINT_TAG = "fingerprint"
#: The splits every instance is evaluated on; a run's metrics are ``<split>_bpd``.
SPLITS = ("train", "val", "test")


def objective(bpd: Mapping[str, Sequence[float]], diverged: Sequence[bool]) -> float:
    """What a job returns (and a sweeper minimises): the mean ``val`` bpd of the instances that
    did not diverge, the ``train`` bpd where there is no validation split; never a test number.
    ``bpd`` maps split to one value per instance; ``inf`` where no instance converged."""
    values = bpd["val"] if "val" in bpd else bpd["train"]
    finite = [float(v) for v, bad in zip(values, diverged) if not bad and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.inf
