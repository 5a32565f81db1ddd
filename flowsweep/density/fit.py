"""``FlowDensity(...).fit(X)``: one ``main.py`` job on the rows of ``X``.

The rows are written to a CSV file and trained as ``dataset=csv`` with the given overrides,
through :func:`flowsweep.app.run.run_job` (the very code ``main.py`` runs: validation split,
dequantization, preprocessing, layout or search, training, logging). So a fitted density
equals the best model of ``python main.py dataset=csv dataset.path=<that file> <overrides>``,
and its job is in the MLflow store like any other (``tracking.uri``, default ``./mlflow.db``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from flowsweep.density.format import SavedDensity

__all__ = ["fit_job", "as_overrides"]


#: Config groups: their options are names, so ``depth=4`` must reach Hydra as the string ``'4'``.
_GROUPS = ("dataset", "layout", "depth", "search", "hparams_search")


def as_overrides(settings: dict[str, Any]) -> list[str]:
    """``{"layout": "opt", "depth": 4, "train.steps": 500}`` → ``["layout='opt'", "depth='4'", "train.steps=500"]``."""
    return [f"{key}='{value}'" if key in _GROUPS else f"{key}={value}" for key, value in settings.items()]


def fit_job(X: Any, settings: dict[str, Any]) -> tuple[SavedDensity, str]:
    """Train on ``X``; returns the job's best model and its run id."""
    from flowsweep.app.run import fingerprint, run_job
    from flowsweep.config.compose import compose_config
    from flowsweep.density.load import load
    from flowsweep.density.log import BEST_MODEL_TAG
    from flowsweep.record.tracking import open_store, resolve_tracking_uri

    frame = X if isinstance(X, pd.DataFrame) else pd.DataFrame(np.asarray(X, dtype=np.float64))
    frame = frame.rename(columns=lambda c: f"x{c}" if isinstance(c, (int, np.integer)) else str(c))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rows.csv"
        frame.to_csv(path, index=False)
        cfg = compose_config(["dataset=csv", f"dataset.path={path}", "progress=false", *as_overrides(settings)])
        run_job(cfg)
        key = fingerprint(cfg)
    uri = resolve_tracking_uri(cfg.tracking.uri, str(Path.cwd()))
    client, experiment_id = open_store(uri, cfg.tracking.experiment)
    jobs = client.search_runs([str(experiment_id)], filter_string=f"tags.fingerprint = '{key}' and "
                              "tags.`flowsweep.role` = 'job'", order_by=["attributes.start_time DESC"], max_results=1)
    if not jobs or BEST_MODEL_TAG not in jobs[0].data.tags:
        raise ValueError("fit: the job logged no model (every instance diverged, or tracking.log_models=false)")
    model = jobs[0].data.tags[BEST_MODEL_TAG]
    density = load(model, uri)
    assert density.saved_ is not None
    return density.saved_, model.split("/")[1]
