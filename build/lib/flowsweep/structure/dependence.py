"""Pairwise dependence between features, and the structure it suggests.

The paper's future work: let the data, not a heuristic or a blind search, say which
features should condition which. :func:`dependence_matrix` estimates, from the training
rows, how much each feature tells about each other one: by default the directional
:func:`affine_gain` (what an affine coupling can gain from the pair: a conditional mean
and scale), or the symmetric mutual information of scikit-learn's k-nearest-neighbour
estimator. :func:`dependence_structure` turns it into masks: layer by layer, the
conditioning set that lets the most dependence condition across the split, where a pair
already covered in an earlier layer counts less each time (``discount``), so that later
layers repeat the strong pairs and reach the weaker ones. The ``dependence`` config node
sets the measure, the rows it reads and the discount (:class:`Dependence`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from flowsweep.config import CHOICES
from flowsweep.structure import Structure

__all__ = ["MEASURES", "Dependence", "dependence_matrix", "affine_gain", "mutual_information", "dependence_structure",
           "covered_weight"]

#: ``gain``: :func:`affine_gain`, directional; ``mi``: :func:`mutual_information`, symmetric.
MEASURES = CHOICES["dependence.measure"]


@dataclass(frozen=True)
class Dependence:
    """A job's estimated dependence: ``weight[i, j]``, what feature ``i`` tells about ``j``, and
    the ``discount`` of :func:`dependence_structure`."""

    weight: np.ndarray
    discount: float = 0.5

    @classmethod
    def estimate(cls, x: np.ndarray, node: Any, seed: int) -> Dependence:
        """From the training rows ``x`` ``[n, d]`` as the ``dependence`` config node says."""
        weight = dependence_matrix(x, str(node.measure), int(node.rows), seed)
        return cls(weight, float(node.discount))

    def structure(self, m: int, depth: int, seed: int = 0) -> Structure:
        return dependence_structure(self.weight, m, depth, self.discount, seed)


def _sample(x: np.ndarray, rows: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    sample = x[rng.choice(len(x), size=rows, replace=False)] if len(x) > rows else x
    return np.asarray(sample, dtype=np.float64)


def dependence_matrix(x: np.ndarray, measure: str = "gain", rows: int = 4000, seed: int = 0) -> np.ndarray:
    """``[d, d]``: how much feature ``i`` tells about feature ``j`` (zero diagonal), by ``measure``
    (:data:`MEASURES`), from at most ``rows`` random rows of ``x`` ``[n, d]``."""
    sample = _sample(x, rows, seed)
    return affine_gain(sample, seed=seed) if measure == "gain" else mutual_information(sample, seed=seed)


def affine_gain(x: np.ndarray, bins: Optional[int] = None, seed: int = 0) -> np.ndarray:
    """``[d, d]``, nats: what an affine coupling can gain by letting ``x_i`` condition ``x_j``.

    The log-likelihood gain, per sample, of a Gaussian for ``x_j`` whose mean and variance
    depend on ``x_i`` (within ``bins`` quantile bins of ``x_i``, or its values where it takes
    fewer; by default one bin per 25 rows, from 3 to 20) over one Gaussian for ``x_j``:
    ``0.5 (log Var x_j - E_b log Var(x_j | b))``, less the
    same with ``x_i``'s bins shuffled (what noise alone gains with that many bins, heavy
    tails included), negatives set to zero. Directional: ``j = sin(i) + noise`` gains more
    from ``i -> j`` than from ``j -> i``; and a scale that ``i`` sets counts as much as a mean.
    """
    n, d = x.shape
    bins = bins or int(np.clip(n // 25, 3, 20))
    centred = x - x.mean(0)
    rng = np.random.default_rng(seed)

    def expected_log_var(codes: np.ndarray) -> np.ndarray:
        count = np.bincount(codes).astype(float)
        keep = count >= 3
        sums = np.stack([np.bincount(codes, weights=centred[:, j]) for j in range(d)], 1)[keep]
        squares = np.stack([np.bincount(codes, weights=centred[:, j] ** 2) for j in range(d)], 1)[keep]
        within = (squares - sums**2 / count[keep, None]) / (count[keep, None] - 1)
        return np.log(np.maximum(within, 1e-300)).T @ count[keep] / count[keep].sum()

    gain = np.zeros((d, d))
    for i in range(d):
        values, codes = np.unique(x[:, i], return_inverse=True)
        if len(values) > bins:
            edges = np.quantile(x[:, i], np.linspace(0, 1, bins + 1)[1:-1])
            codes = np.searchsorted(edges, x[:, i], side="right")
        gain[i] = 0.5 * (expected_log_var(rng.permutation(codes)) - expected_log_var(codes))
    np.fill_diagonal(gain, 0.0)
    return np.clip(gain, 0.0, None)


def mutual_information(x: np.ndarray, neighbors: int = 3, seed: int = 0) -> np.ndarray:
    """Symmetric ``[d, d]`` mutual information (nats, ``>= 0``, zero diagonal) of the columns of
    ``x`` ``[n, d]`` by scikit-learn's k-nearest-neighbour estimator (Kraskov et al.)."""
    from sklearn.feature_selection import mutual_info_regression

    sample = np.asarray(x, dtype=np.float64)
    d = sample.shape[1]
    mi = np.zeros((d, d))
    for j in range(d):
        mi[:, j] = mutual_info_regression(sample, sample[:, j], n_neighbors=neighbors, random_state=seed)
    mi = np.clip((mi + mi.T) / 2.0, 0.0, None)
    np.fill_diagonal(mi, 0.0)
    return mi


def covered_weight(conditioning: np.ndarray, weight: np.ndarray) -> float:
    """Dependence a layer lets condition: ``sum weight[i, j]`` over conditioning ``i`` and
    transformed ``j`` (``conditioning`` a boolean ``[d]`` mask, ``weight`` ``[d, d]``)."""
    return float(weight[np.ix_(conditioning, ~conditioning)].sum())


def _best_split(weight: np.ndarray, m: int, start: np.ndarray) -> np.ndarray:
    """Local search from ``start`` (bool ``[d]``, ``m`` true): swap a conditioning and a
    transformed feature while that raises :func:`covered_weight` (``weight`` may be asymmetric)."""
    cond = start.copy()
    while True:
        c, t = np.flatnonzero(cond), np.flatnonzero(~cond)
        # Swapping c[a] (to the transformed side) and t[b] (to the conditioning side) loses the
        # pairs c[a] -> A and B -> t[b], gains t[b] -> A and B -> c[a]; (c[a], t[b]) and
        # (t[b], c[a]) are corrected for being counted twice or not at all.
        lose = weight[np.ix_(c, t)].sum(1)[:, None] + weight[np.ix_(c, t)].sum(0)[None, :] - weight[np.ix_(c, t)]
        win = weight[np.ix_(t, t)].sum(1)[None, :] + weight[np.ix_(c, c)].sum(0)[:, None] + weight[np.ix_(t, c)].T
        gain = win - lose
        a, b = np.unravel_index(np.argmax(gain), gain.shape)
        if gain[a, b] <= 1e-12:
            return cond
        cond[c[a]], cond[t[b]] = False, True


def dependence_structure(weight: np.ndarray, m: int, depth: int, discount: float = 0.5,
                         seed: int = 0) -> Structure:
    """``depth`` layers of ``m`` conditioning features that cover the most dependence.

    ``weight`` ``[d, d]`` is the dependence of feature ``j`` on feature ``i`` (symmetric for
    mutual information). Layer ``l``'s split maximises ``sum weight[i, j] * discount**c[i, j]``
    over conditioning ``i`` and transformed ``j``, where ``c[i, j]`` counts the earlier layers
    in which ``i`` conditioned ``j``; each layer is a local optimum of single swaps, started
    from the previous layer's split flipped (so the next layer tends to cover the reverse
    direction) or, for the first, from a seeded random split.
    """
    d = weight.shape[0]
    rng = np.random.default_rng(seed)
    counts = np.zeros((d, d))
    layers = []
    cond = np.zeros(d, dtype=bool)
    cond[rng.choice(d, size=m, replace=False)] = True
    for _ in range(depth):
        effective = weight * discount**counts
        flipped = ~cond if m == d - m else cond
        cond = max((_best_split(effective, m, s) for s in (cond, flipped)),
                   key=lambda c: covered_weight(c, effective))
        counts[np.ix_(cond, ~cond)] += 1
        layers.append(tuple(np.flatnonzero(cond).tolist()))
    return Structure(d, m, tuple(layers))
