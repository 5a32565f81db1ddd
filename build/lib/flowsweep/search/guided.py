"""Data-driven structure search: evolution from the dependence structure, by dependence-biased swaps.

The paper's future work made an optimizer. The search starts from the job's
:meth:`Dependence.structure <flowsweep.structure.dependence.Dependence.structure>` (the masks that let the most estimated
dependence condition across each layer's split) and refines it by (1+λ) evolution whose
offspring differ from the best by a few swaps of one conditioning and one transformed
feature in one layer. A swap is drawn in proportion to the dependence of the two
features (it turns a dependent pair's direction around, or brings an uncovered pair
across the split), or, with probability ``explore``, uniformly. Trial values are noisy,
and an elitist search keeps a lucky one for good: the best structure is evaluated again
in every generation and held at the mean of its evaluations, and an offspring must beat
that mean to replace it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Optional

import numpy as np

from flowsweep.config import ConfigError
from flowsweep.search.base import StructureOptimizer, Trial
from flowsweep.structure import Structure

__all__ = ["swap", "Guided"]


def swap(structure: Structure, rng: np.random.Generator, weight: Optional[np.ndarray], count: int,
         explore: float) -> Structure:
    """``count`` swaps of a conditioning and a transformed feature, each in a random layer; a swap's
    pair drawn in proportion to ``weight[i, j] + weight[j, i]`` (uniformly with probability ``explore``,
    or where there is no weight)."""
    layers = [list(layer) for layer in structure.conditioning]
    for _ in range(count):
        l = int(rng.integers(structure.depth))
        cond = np.array(layers[l])
        trans = np.setdiff1d(np.arange(structure.d), cond)
        if weight is None or rng.random() < explore:
            a, b = rng.integers(len(cond)), rng.integers(len(trans))
        else:
            w = weight[np.ix_(cond, trans)] + weight[np.ix_(trans, cond)].T
            w = w + 1e-3 * max(float(w.mean()), 1e-12)  # every swap stays possible
            a, b = np.unravel_index(rng.choice(w.size, p=(w / w.sum()).ravel()), w.shape)
        cond[a] = trans[b]
        layers[l] = cond.tolist()
    return Structure(structure.d, structure.m, tuple(tuple(layer) for layer in layers))


@dataclass
class Guided(StructureOptimizer):
    """(1+λ) evolution from the dependence structure with dependence-biased swaps; the best is
    re-evaluated in every generation.

    Arguments:
        offspring: λ, the offspring per generation.
        swap_p: The number of swaps of an offspring is ``Geometric(swap_p)``.
        explore: Probability that a swap is drawn uniformly.
        reevaluate: Evaluate the best again in every generation (its value: the mean of its evaluations).
    """

    uses_dependence: ClassVar[bool] = True
    offspring: int = 4
    swap_p: float = 0.5
    explore: float = 0.25
    reevaluate: bool = True
    _evaluations: list[float] = field(default_factory=list, init=False, repr=False)

    def check(self) -> None:
        super().check()
        if self.offspring < 1:
            raise ConfigError("search.offspring", f"λ must be >= 1, got {self.offspring}")
        if not 0.0 < self.swap_p <= 1.0:
            raise ConfigError("search.swap_p", f"must be in (0, 1], got {self.swap_p}")
        if not 0.0 <= self.explore <= 1.0:
            raise ConfigError("search.explore", f"must be in [0, 1], got {self.explore}")

    def initial(self) -> list[Structure]:
        if self.dependence is None:
            raise ConfigError("search", f"{type(self).__name__} needs the features' dependence matrix")
        return [self.dependence.structure(self.m, self.depth, self.seed)]

    def propose(self) -> list[Structure]:
        children = [swap(self.best.structure, self.rng, self.dependence.weight,
                         min(int(self.rng.geometric(self.swap_p)), 2 * self.depth), self.explore)
                    for _ in range(self.offspring)]
        return children + ([self.best.structure] if self.reevaluate else [])

    def select(self, complete: list[Trial]) -> Optional[Trial]:
        again = [t for t in complete if self.best is not None and t.structure == self.best.structure]
        # An offspring is measured against the best's evaluation of the same iteration (with
        # paired seeds: the same initial parameters and minibatches), else its running mean.
        reference = float(np.mean([t.value for t in again])) if again else self.best_value
        self._evaluations.extend(t.value for t in again)
        others = [t for t in complete if t not in again]
        winner = min(others, key=lambda t: (t.value, t.number)) if others else None
        if winner is not None and winner.value < reference:
            self._evaluations = [winner.value]
            return winner
        return None

    @property
    def best_value(self) -> float:
        return float(np.mean(self._evaluations)) if self._evaluations else math.inf
