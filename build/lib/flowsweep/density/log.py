"""A job's trained models into its MLflow runs: each converged instance's ``model/``, and
on the parent run the name of the best one by validation bpd.

The hook of :func:`flowsweep.app.run.run_job`; ``tracking.log_models=false`` turns it off.
Each model folder is a few KB (:mod:`flowsweep.density.format`), written in about a
millisecond (:func:`flowsweep.density.pyfunc.save_pyfunc`), and goes to the run through the
job's MLflow writer, like its other artifacts.
"""

from __future__ import annotations

import math
import tempfile
import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np

from flowsweep.data import Dataset
from flowsweep.density.format import QUANTILES, SavedDensity
from flowsweep.density.pyfunc import MODEL_ARTIFACT, save_pyfunc
from flowsweep.model import CouplingFlows
from flowsweep.record.run_group import JOB, RunGroup

__all__ = ["BEST_INSTANCE_TAG", "BEST_MODEL_TAG", "best_instance", "log_models", "model_uri", "model_source", "register"]

#: Tags on a job's parent run: the instance with the lowest validation bpd and its model's URI.
BEST_INSTANCE_TAG, BEST_MODEL_TAG = "flowsweep.best_instance", "flowsweep.best_model"


def best_instance(result: dict) -> Optional[int]:
    """The converged instance with the lowest ``val_bpd`` (``train_bpd`` without a validation split)."""
    values = np.where(result["diverged"], np.inf, result["val_bpd" if "val_bpd" in result else "train_bpd"])
    return int(np.argmin(values)) if np.isfinite(values).any() else None


def log_models(runs: RunGroup, result: dict, data: Dataset, source: dict[str, Any]) -> Optional[int]:
    """Log every converged instance's model (of ``result["flow"]``, the job's trained
    :class:`~flowsweep.model.CouplingFlows`) as ``runs:/<id>/model`` and tag the parent run with
    the best one; returns the best instance (``None`` if every instance diverged).

    Nothing here waits for the writer: each model folder is handed to it as it is, and the
    best model's run id is filled into its tag by the writer."""
    flow: CouplingFlows = result["flow"]
    # The training rows' log-densities (nats, raw units) for the outlier flag, from the
    # per-row bpd the job's evaluation kept (the largest split is not scored twice).
    logp = -np.asarray(result["train_row_bpd"]) * data.d * math.log(2.0)
    theta = flow.theta.detach().numpy()
    for i, structure in enumerate(flow.structures):
        if result["diverged"][i] or not np.isfinite(logp[i]).all():
            continue
        saved = SavedDensity(
            columns=data.columns, spec=flow.spec, structure=structure, theta=theta[i].copy(), maps=data.maps,
            widths=data.widths, quantiles=dict(zip(QUANTILES, np.quantile(logp[i], QUANTILES).tolist())),
            source={**source, "instance": i,
                    **{k: float(result[k][i]) for k in ("train_bpd", "val_bpd", "test_bpd") if k in result}},
        )
        folder = Path(tempfile.mkdtemp(prefix="flowsweep-model-"))
        save_pyfunc(folder / MODEL_ARTIFACT, saved)
        runs.artifacts(i, str(folder), move=True)
    best = best_instance(result)
    if best is not None:
        runs.tag(JOB, BEST_INSTANCE_TAG, str(best))
        runs.tag_artifact_uri(JOB, BEST_MODEL_TAG, best, MODEL_ARTIFACT)
    return best


def model_uri(run_id: str) -> str:
    """The URI of the model a run logged: ``runs:/<run id>/model``."""
    return f"runs:/{run_id}/{MODEL_ARTIFACT}"


def model_source(cfg: Any, fingerprint: str) -> dict[str, Any]:
    """What a saved model says about where it came from (for people; never read back)."""
    from omegaconf import OmegaConf

    keys = ("dataset.name", "layout.name", "depth.layers", "seed", "model.preprocess", "dataset.dequantize")
    return {"fingerprint": fingerprint, **{k: OmegaConf.select(cfg, k) for k in keys}}


def register(tracking_uri: str, model_uri: str, name: str) -> None:
    """``model_uri`` as a new version of ``name`` in the store's Model Registry."""
    import mlflow

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.register_model(model_uri, name)
