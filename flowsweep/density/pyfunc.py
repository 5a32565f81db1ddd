"""The MLflow face of a saved density: a ``python_function`` model with a loader module.

A run's ``model/`` artifact is an MLflow model folder (``MLmodel``, requirements) whose
``python_function`` flavour names this module as its ``loader_module`` and keeps the
density's two files (:mod:`flowsweep.density.format`) as its data: MLflow loads it by
importing this module and calling :func:`_load_pyfunc`, so nothing is pickled.
``predict(df)`` returns a DataFrame with one column, ``log_density`` (nats, raw units),
one row per input row; ``mlflow models serve`` answers the same over REST.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import pandas as pd

from flowsweep.density.estimator import TrainedDensity
from flowsweep.density.format import SavedDensity, read, write

__all__ = ["MODEL_ARTIFACT", "DATA_DIR", "save_pyfunc", "DensityPyfunc"]

#: Where a run keeps its model: ``runs:/<run id>/model``.
MODEL_ARTIFACT = "model"
#: The density's files inside the MLflow model folder.
DATA_DIR = "density"


class DensityPyfunc:
    """What ``mlflow.pyfunc.load_model`` wraps: ``predict`` → ``log_density`` per row."""

    def __init__(self, density: TrainedDensity):
        self.density = density

    def predict(self, model_input: Any, params: Optional[dict[str, Any]] = None) -> pd.DataFrame:
        return pd.DataFrame({"log_density": self.density.score_samples(model_input)})


def _load_pyfunc(data_path: str) -> DensityPyfunc:
    """MLflow's loader hook: ``data_path`` is the model folder's :data:`DATA_DIR`."""
    return DensityPyfunc(TrainedDensity.from_saved(read(Path(data_path))))


def _requirements() -> list[str]:
    """Pinned to this process's versions; naming them spares MLflow seconds of inference per model."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("mlflow", "torch", "numpy", "pandas")] + ["flowsweep"]


_REQUIREMENTS: list[str] = []


def save_pyfunc(folder: Path, saved: SavedDensity, staging: Path) -> None:
    """Write the MLflow model of ``saved`` to ``folder`` (which must not exist); ``staging``
    is an empty scratch folder."""
    import mlflow.pyfunc
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    if not _REQUIREMENTS:
        _REQUIREMENTS.extend(_requirements())
    write(staging / DATA_DIR, saved)
    signature = ModelSignature(inputs=Schema([ColSpec("double", c) for c in saved.columns]),
                               outputs=Schema([ColSpec("double", "log_density")]))
    mlflow.pyfunc.save_model(str(folder), loader_module=__name__, data_path=str(staging / DATA_DIR),
                             signature=signature, pip_requirements=list(_REQUIREMENTS))
