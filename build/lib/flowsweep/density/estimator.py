"""A trained flow as a density, in scikit-learn's conventions for density estimators
(``KernelDensity``, ``GaussianMixture``): :meth:`TrainedDensity.score_samples`,
:meth:`~TrainedDensity.score`, :meth:`~TrainedDensity.sample`, plus :meth:`~TrainedDensity.bpd`
and :meth:`~TrainedDensity.transform`. :func:`flowsweep.load` returns one; training one
(``flowsweep.FlowDensity(...).fit(X)``, a subclass) runs a job, so it lives with the jobs in
:mod:`flowsweep.app.fit`.

Every number is in the raw units of the table: the model's fixed maps (``model.preprocess``)
run first and their log-determinant is subtracted, so ``score_samples`` is
``log p(x)`` in nats of the rows as given. The model is the one definition of the family,
:class:`flowsweep.model.CouplingFlows`, with one instance.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np
import pandas as pd
import torch

from flowsweep.density.format import SavedDensity
from flowsweep.density.rows import as_rows
from flowsweep.model import CouplingFlows

__all__ = ["TrainedDensity"]

#: Rows scored at once: the chunk :func:`flowsweep.training.row_bpd` uses. The run scores on the
#: native kernel where it trained on it, this estimator on the reference model: the two agree
#: to float32 rounding (``tests/test_native.py``), not bit for bit.
_CHUNK = 8192


class TrainedDensity:
    """A trained coupling-flow density of a table's columns (one saved model, :class:`SavedDensity`)."""

    def __init__(self, saved: Optional[SavedDensity] = None):
        self.saved_ = saved
        self._flow: Optional[CouplingFlows] = None

    @classmethod
    def from_saved(cls, saved: SavedDensity) -> TrainedDensity:
        return TrainedDensity(saved)

    # -- the fitted model ----------------------------------------------------------------

    @property
    def columns(self) -> tuple[str, ...]:
        return self._saved().columns

    @property
    def n_features_in_(self) -> int:
        return len(self.columns)

    def _saved(self) -> SavedDensity:
        if self.saved_ is None:
            raise ValueError(f"this {type(self).__name__} is not fitted: call fit(X) or use flowsweep.load(...)")
        return self.saved_

    def flow(self) -> CouplingFlows:
        """The trained model (one instance), built on first use."""
        if self._flow is None:
            saved = self._saved()
            flow = CouplingFlows(saved.spec, [saved.structure])
            with torch.no_grad():
                flow.theta[0] = torch.from_numpy(saved.theta)
            self._flow = flow.eval()
        return self._flow

    def _model_space(self, X: Any) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(as_rows(X, self.columns), dtype=np.float32))
        for step in self._saved().maps:
            x = step.apply(x)
        return x

    @property
    def log_det(self) -> float:
        """Nats per row the fixed maps add: ``log p_raw = log p_model - log_det``."""
        return float(sum(step.log_det for step in self._saved().maps))

    # -- scikit-learn's density methods ----------------------------------------------------

    @torch.no_grad()
    def score_samples(self, X: Any) -> np.ndarray:
        """Log-density of every row, nats, raw units: ``[n]`` float64."""
        x, flow = self._model_space(X), self.flow()
        parts = [flow.log_prob(x[i : i + _CHUNK])[0].double() for i in range(0, len(x), _CHUNK)]
        logp = torch.cat(parts) if parts else torch.empty(0, dtype=torch.float64)
        return (logp - self.log_det).numpy()

    def score(self, X: Any, y: None = None) -> float:
        """Total log-likelihood of the rows (nats), as scikit-learn's ``KernelDensity.score``."""
        return float(self.score_samples(X).sum())

    def bpd(self, X: Any) -> float:
        """Mean bits per dimension of the rows (raw units), the number runs log as ``*_bpd``."""
        return float((-self.score_samples(X) / (self.n_features_in_ * math.log(2.0))).mean())

    @torch.no_grad()
    def sample(self, n: int = 1, random_state: Optional[int] = None) -> pd.DataFrame:
        """``n`` rows drawn from the density: a DataFrame with the table's columns, raw units
        (the dequantized, continuous values the model was trained on)."""
        generator = torch.Generator().manual_seed(int(random_state)) if random_state is not None else None
        y = self.flow().sample(int(n), generator)[0]
        for step in reversed(self._saved().maps):
            y = step.invert(y)
        return pd.DataFrame(y.double().numpy(), columns=list(self.columns))

    @torch.no_grad()
    def transform(self, X: Any) -> np.ndarray:
        """The latent rows ``z`` ``[n, d]`` (standard normal under the model) of ``X``."""
        return self.flow()(self._model_space(X))[0][0].double().numpy()

    def outlier_threshold(self, quantile: float = 0.01) -> float:
        """The log-density below which the given share of the training rows lies (nats)."""
        quantiles = self._saved().quantiles
        if quantile not in quantiles:
            raise ValueError(f"quantile: {quantile} not kept; the model keeps {sorted(quantiles)}")
        return quantiles[quantile]

    def __repr__(self) -> str:
        if self.saved_ is None:
            return f"{type(self).__name__}()"
        s = self.saved_.spec
        return f"{type(self).__name__}(d={s.d}, m={s.m}, depth={s.depth}, columns={list(self.columns)})"
