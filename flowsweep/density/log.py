"""A job's trained models into its MLflow runs: each converged instance's ``model/``, and
on the parent run the name of the best one by validation bpd.

The hook of :func:`flowsweep.app.run.run_job`; ``tracking.log_models=false`` turns it off.
Each model folder is a few KB (:mod:`flowsweep.density.format`) and goes to the run through
the job's MLflow writer, like its other artifacts.
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
from flowsweep.training import row_bpd

__all__ = ["BEST_INSTANCE_TAG", "BEST_MODEL_TAG", "best_instance", "log_models"]

#: Tags on a job's parent run: the instance with the lowest validation bpd and its model's URI.
BEST_INSTANCE_TAG, BEST_MODEL_TAG = "flowsweep.best_instance", "flowsweep.best_model"


def best_instance(result: dict) -> Optional[int]:
    """The converged instance with the lowest ``val_bpd`` (``train_bpd`` without a validation split)."""
    values = np.where(result["diverged"], np.inf, result["val_bpd" if "val_bpd" in result else "train_bpd"])
    return int(np.argmin(values)) if np.isfinite(values).any() else None


def log_models(runs: RunGroup, result: dict, data: Dataset, source: dict[str, Any]) -> Optional[str]:
    """Log every converged instance's model (of ``result["flow"]``, the job's trained
    :class:`~flowsweep.model.CouplingFlows`) as ``runs:/<id>/model``; returns the best one's URI."""
    flow: CouplingFlows = result["flow"]
    # The training rows' log-densities (nats, raw units) for the outlier flag: one pass for all K.
    logp = -row_bpd(flow, data.train).numpy() * data.d * math.log(2.0)
    theta = flow.theta.detach().numpy()
    for i, structure in enumerate(flow.structures):
        if result["diverged"][i] or not np.isfinite(logp[i]).all():
            continue
        saved = SavedDensity(
            columns=data.columns, spec=flow.spec, structure=structure, theta=theta[i].copy(), maps=data.maps,
            widths=data.widths, quantiles={q: float(np.quantile(logp[i], q)) for q in QUANTILES},
            source={**source, "instance": i, "run_id": runs.run_ids[i],
                    **{k: float(result[k][i]) for k in ("train_bpd", "val_bpd", "test_bpd") if k in result}},
        )
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # MLflow asks for an input example; the signature says it all
            save_pyfunc(Path(tmp) / "out" / MODEL_ARTIFACT, saved, Path(tmp))
            runs.artifacts(i, str(Path(tmp) / "out"))
    best = best_instance(result)
    if best is None:
        return None
    uri = f"runs:/{runs.run_ids[best]}/{MODEL_ARTIFACT}"
    runs.tag(JOB, BEST_INSTANCE_TAG, str(best))
    runs.tag(JOB, BEST_MODEL_TAG, uri)
    return uri


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
