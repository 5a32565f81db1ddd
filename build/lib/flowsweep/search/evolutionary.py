"""The paper's evolutionary structure search (Algorithm 1) and its (1+λ) variant.

Each iteration mutates the best-so-far structure: ``k ~ Geometric(0.5)`` randomly
chosen layers (``k >= 1``, capped at ``L``) get their masks reshuffled, keeping ``m``
conditioning features each. An offspring replaces the best when its value is ``<=``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from flowsweep.config import ConfigError
from flowsweep.search.base import StructureOptimizer
from flowsweep.structure import Structure, reshuffle_layers

__all__ = ["modify", "Evolutionary", "EvolutionaryLambda"]


def modify(structure: Structure, rng: np.random.Generator, p: float = 0.5) -> Structure:
    """Reshuffle the masks of ``min(k, L)`` distinct random layers, ``k ~ Geometric(p)``."""
    k = min(int(rng.geometric(p)), structure.depth)
    layers = rng.choice(structure.depth, size=k, replace=False)
    return reshuffle_layers(structure, layers.tolist(), rng)


@dataclass
class Evolutionary(StructureOptimizer):
    """(1+1) evolutionary search, Algorithm 1: one offspring of the best per iteration.

    Arguments:
        geometric_p: Success probability of the number-of-layers distribution (paper: 0.5).
    """

    geometric_p: float = 0.5

    def check(self) -> None:
        super().check()
        if not 0.0 < self.geometric_p <= 1.0:
            raise ConfigError("search.geometric_p", f"must be in (0, 1], got {self.geometric_p}")

    def propose(self) -> list[Structure]:
        return [modify(self.best.structure, self.rng, self.geometric_p)]


@dataclass
class EvolutionaryLambda(Evolutionary):
    """(1+λ) evolutionary search: ``offspring`` mutants of the best per generation, one batch.

    Arguments:
        offspring: λ, the mutants per generation.
        budget: ``matched`` spends ``iterations`` trials in all (as many as the (1+1)
            run, for a fair comparison: ``ceil(iterations / λ)`` generations, the last
            possibly smaller); ``generations`` runs ``iterations`` generations of λ.
    """

    offspring: int = 4
    budget: str = "matched"

    def check(self) -> None:
        super().check()
        if self.offspring < 1:
            raise ConfigError("search.offspring", f"λ must be >= 1, got {self.offspring}")
        if self.budget not in ("matched", "generations"):
            raise ConfigError("search.budget", f"must be 'matched' or 'generations', got {self.budget!r}")

    @property
    def last_iteration(self) -> int:
        if self.budget == "matched":
            return math.ceil(self.iterations / self.offspring)
        return self.iterations

    def propose(self) -> list[Structure]:
        count = self.offspring
        if self.budget == "matched":
            count = min(count, self.iterations - (len(self.history) - 1))
        return [modify(self.best.structure, self.rng, self.geometric_p) for _ in range(count)]
