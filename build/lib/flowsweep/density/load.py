"""``flowsweep.load``: a saved density from a run, the registry or a folder.

``runs:/<run id>/model`` and ``models:/<name>/<version>`` are downloaded through MLflow (the
tracking store of ``MLFLOW_TRACKING_URI``, else ``./mlflow.db``); a local path may be the MLflow
model folder or the density folder inside it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Optional

from flowsweep.density.estimator import TrainedDensity
from flowsweep.density.format import SPEC_FILE, ModelFormatError, read
from flowsweep.density.pyfunc import DATA_DIR

__all__ = ["load", "default_tracking_uri"]


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI``, else the sqlite store ``main.py`` writes by default."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def load(uri: str, tracking_uri: Optional[str] = None) -> TrainedDensity:
    """The :class:`TrainedDensity` saved at ``uri``; :class:`ModelFormatError` naming what is wrong.

    ``tracking_uri``: the MLflow store of a ``runs:/`` or ``models:/`` URI (default: MLflow's
    current one, else :func:`default_tracking_uri`)."""
    uri = str(uri)
    if uri.startswith(("runs:/", "models:/")):
        import mlflow
        from mlflow.exceptions import MlflowException

        if tracking_uri is not None or not mlflow.is_tracking_uri_set():
            mlflow.set_tracking_uri(tracking_uri or default_tracking_uri())
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one line per file otherwise
        with tempfile.TemporaryDirectory() as tmp:
            try:
                local = Path(mlflow.artifacts.download_artifacts(uri, dst_path=tmp))
            except (MlflowException, OSError) as error:
                first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                raise ModelFormatError(f"{uri}: no model there ({first})") from None
            return _read_folder(local, uri)
    path = Path(uri).expanduser()
    if not path.exists():
        raise ModelFormatError(f"{uri}: no such file or folder, and not a runs:/ or models:/ URI")
    return _read_folder(path, uri)


def _read_folder(path: Path, name: str) -> TrainedDensity:
    for folder in (path / "data" / DATA_DIR, path):
        if (folder / SPEC_FILE).is_file():
            return TrainedDensity.from_saved(read(folder))
    raise ModelFormatError(f"{name}: holds no flowsweep density ({SPEC_FILE}); a run logs one under 'model/'")
