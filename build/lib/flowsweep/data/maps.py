"""The fixed maps of ``model.preprocess``, fitted on the training rows, as values.

A map turns raw rows into model-space rows (float32 in, float32 out, computed in float64
as the datasets always were) and back, and knows its log-determinant (nats per row):
``log p_raw(x) = log p_model(map(x)) - log_det``. :func:`flowsweep.data.standardized` and
:func:`flowsweep.data.whitened` apply them to a dataset's splits; a saved model
(:mod:`flowsweep.density`) keeps the same maps, so it scores raw rows with the very numbers
of the run that trained it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Standardize", "Whiten", "Map"]


@dataclass(frozen=True, eq=False)
class Standardize:
    """``(x - mean) / std`` per feature; ``mean`` and ``std`` ``[d]`` float64 (train, ddof=0)."""

    mean: np.ndarray
    std: np.ndarray
    kind = "standardize"

    @property
    def log_det(self) -> float:
        return float(np.log(self.std).sum())

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Raw ``[n, d]`` → model space ``[n, d]`` float32."""
        return ((x.double() - torch.from_numpy(self.mean)) / torch.from_numpy(self.std)).float()

    def invert(self, y: torch.Tensor) -> torch.Tensor:
        """Model space ``[n, d]`` → raw ``[n, d]`` float64."""
        return y.double() * torch.from_numpy(self.std) + torch.from_numpy(self.mean)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean, "std": self.std}


@dataclass(frozen=True, eq=False)
class Whiten:
    """``x @ W`` with the symmetric ``W = S^(-1/2)`` ``[d, d]`` float64 (ZCA)."""

    matrix: np.ndarray
    #: ``-log|det W|``, from the eigenvalues ``W`` was built from.
    log_det: float
    kind = "whiten"

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return (x.double() @ torch.from_numpy(self.matrix)).float()  # rows times W, which is symmetric

    def invert(self, y: torch.Tensor) -> torch.Tensor:
        return y.double() @ torch.from_numpy(np.linalg.inv(self.matrix))

    def arrays(self) -> dict[str, np.ndarray]:
        return {"matrix": self.matrix, "log_det": np.asarray(self.log_det)}


Map = Standardize | Whiten
