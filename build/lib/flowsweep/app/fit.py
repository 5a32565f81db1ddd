"""``flowsweep.FlowDensity(...).fit(X)``: one ``main.py`` job on the rows of ``X``.

The rows are written to a CSV file and trained as ``dataset=csv`` with the given overrides,
through :func:`flowsweep.app.run.run_job` (the very code ``main.py`` runs: validation split,
dequantization, preprocessing, layout or search, training, logging). So a fitted density
equals the best model of ``python main.py dataset=csv dataset.path=<that file> <overrides>``,
and its job is in the MLflow store like any other (``tracking.uri``, default ``./mlflow.db``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from flowsweep.app.run import fingerprint, run_job
from flowsweep.config.compose import compose_config
from flowsweep.density import TrainedDensity, load
from flowsweep.density.format import SavedDensity
from flowsweep.density.log import BEST_MODEL_TAG
from flowsweep.record.tracking import open_store, resolve_tracking_uri

__all__ = ["FlowDensity", "fit_job", "as_overrides"]

#: Config groups: their options are names, so ``depth=4`` must reach Hydra as the string ``'4'``.
_GROUPS = ("dataset", "layout", "depth", "search", "hparams_search")


class FlowDensity(TrainedDensity):
    """A coupling-flow density estimator: ``FlowDensity(**overrides).fit(X)`` trains one
    through ``main.py``'s job code; keyword arguments are config keys, e.g.
    ``FlowDensity(layout="opt", depth=4, seed=0, **{"train.steps": 500})``. Once fitted it is a
    :class:`~flowsweep.density.TrainedDensity` (``score_samples``, ``sample``, ...)."""

    def __init__(self, **overrides: Any):
        super().__init__()
        self.overrides = overrides
        self.run_id_: Optional[str] = None

    def fit(self, X: Any, y: None = None) -> FlowDensity:
        """Train on the rows of ``X`` (a DataFrame, or an array: columns ``x0``, ``x1``, ...) and keep
        the best instance by validation bpd; the job is logged to ``tracking.uri`` as any other."""
        self.saved_, self.run_id_ = fit_job(X, self.overrides)
        self._flow = None
        return self

    def __repr__(self) -> str:
        if self.saved_ is None:
            return f"FlowDensity({', '.join(f'{k}={v!r}' for k, v in self.overrides.items())})"
        return super().__repr__()


def as_overrides(settings: dict[str, Any]) -> list[str]:
    """``{"layout": "opt", "depth": 4, "train.steps": 500}`` → ``["layout='opt'", "depth='4'", "train.steps=500"]``."""
    return [f"{key}='{value}'" if key in _GROUPS else f"{key}={value}" for key, value in settings.items()]


def fit_job(X: Any, settings: dict[str, Any]) -> tuple[SavedDensity, str]:
    """Train on ``X``; returns the job's best model and its run id."""
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
