"""The MLflow face of a saved density: a ``python_function`` model with a loader module.

A run's ``model/`` artifact is an MLflow model folder (``MLmodel``, requirements) whose
``python_function`` flavour names this module as its ``loader_module`` and keeps the
density's two files (:mod:`flowsweep.density.format`) as its data: MLflow loads it by
importing this module and calling :func:`_load_pyfunc`, so nothing is pickled.
``predict(df)`` returns a DataFrame with one column, ``log_density`` (nats, raw units),
one row per input row; ``mlflow models serve`` answers the same over REST.
"""

from __future__ import annotations

import datetime
import functools
import json
import tempfile
import uuid
import warnings
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from flowsweep.density.estimator import TrainedDensity
from flowsweep.density.format import SavedDensity, read, write

__all__ = ["MODEL_ARTIFACT", "DATA_DIR", "save_pyfunc", "DensityPyfunc"]

#: Where a run keeps its model: ``runs:/<run id>/model``.
MODEL_ARTIFACT = "model"
#: The density's files inside the MLflow model folder (``data/density``).
DATA_DIR = "density"
#: MLflow's description of a model folder.
MLMODEL = "MLmodel"


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


#: Stand-ins in the template's ``MLmodel`` for what differs between models (see :func:`_template`).
_UUID, _CREATED, _SIZE = "flowsweepModelUuid", "flowsweepTimeCreated", 918273645546372819


@functools.lru_cache(maxsize=16)
def _template(columns: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """The files of an MLflow model folder of a density of ``columns``, but its data: ``(path,
    text)`` pairs. Written once by ``mlflow.pyfunc.save_model`` (tens of milliseconds: it checks
    the requirements against the installed packages and writes YAML), then kept, with stand-ins
    in ``MLmodel`` for the model's own uuid, time and size."""
    import mlflow.pyfunc
    from mlflow.models import Model, ModelSignature
    from mlflow.types import ColSpec, Schema

    signature = ModelSignature(inputs=Schema([ColSpec("double", c) for c in columns]),
                               outputs=Schema([ColSpec("double", "log_density")]))
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # MLflow asks for an input example; the signature says it all
        (Path(tmp) / DATA_DIR).mkdir()
        folder = Path(tmp) / "model"
        mlflow.pyfunc.save_model(str(folder), loader_module=__name__, data_path=str(Path(tmp) / DATA_DIR),
                                 signature=signature, pip_requirements=_requirements())
        model = Model.load(str(folder))
        model.model_uuid, model.utc_time_created, model.model_size_bytes = _UUID, _CREATED, _SIZE
        model.save(str(folder / MLMODEL))
        return tuple((str(path.relative_to(folder)), path.read_text()) for path in sorted(folder.rglob("*"))
                     if path.is_file())


def save_pyfunc(folder: Path, saved: SavedDensity) -> None:
    """Write the MLflow model of ``saved`` into ``folder`` (created): the files
    ``mlflow.pyfunc.save_model`` writes, with the density's two files as its data.

    A job saves one model per instance, so the folder is the template of :func:`_template`
    with this model's uuid, time and size filled in: about a millisecond, not tens."""
    data = folder / "data" / DATA_DIR
    write(data, saved)
    size = sum(path.stat().st_size for path in data.iterdir())
    created = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")
    for name, text in _template(tuple(saved.columns)):
        if name == MLMODEL:  # double-quoted YAML scalars: always read back as strings
            text = (text.replace(_UUID, json.dumps(uuid.uuid4().hex)).replace(_CREATED, json.dumps(created))
                    .replace(str(_SIZE), str(size)))
        (folder / name).write_text(text)
