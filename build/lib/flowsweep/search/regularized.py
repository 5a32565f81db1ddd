"""Regularized (aging) evolution, the paper's reference [10] (Real et al., AAAI 2019).

A population of the ``population`` most recent trials; each offspring mutates the best
of ``sample`` members drawn at random, and the oldest member dies when a child is born.
Ageing, not value, decides who leaves, so a structure whose value was a lucky draw
cannot hold the population for ever: a natural fit for noisy trial values. The best
structure is the best value ever seen. Mutations are Algorithm 1's layer reshuffles,
or with ``mutation=swap`` the dependence-biased swaps of :mod:`flowsweep.search.guided`;
``start=dependence`` seeds the population with the dependence structure and swaps of it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import ClassVar

from flowsweep.config import ConfigError
from flowsweep.search.base import Proposal, StructureOptimizer, Trial
from flowsweep.search.evolutionary import modify
from flowsweep.search.guided import swap
from flowsweep.structure import Structure

__all__ = ["RegularizedEvolution"]


@dataclass
class RegularizedEvolution(StructureOptimizer):
    """Aging evolution (see the module docstring).

    Arguments:
        population: Members kept (the newest complete trials).
        sample: Members drawn per tournament.
        offspring: Children per iteration (one batch).
        mutation: ``reshuffle`` (Algorithm 1's ``modify``) or ``swap`` (dependence-biased).
        start: ``random`` structures, or the ``dependence`` structure and swaps of it.
        geometric_p: Layers reshuffled, or swaps made, per child: ``Geometric(geometric_p)``.
        explore: Of ``swap``: the probability of a uniform swap.
    """

    uses_dependence: ClassVar[bool] = True
    population: int = 12
    sample: int = 3
    offspring: int = 4
    mutation: str = "swap"
    start: str = "dependence"
    geometric_p: float = 0.5
    explore: float = 0.25
    _members: deque = field(default_factory=deque, init=False, repr=False)

    def check(self) -> None:
        super().check()
        if self.population < 2 or not 1 <= self.sample <= self.population:
            raise ConfigError("search.sample", f"needs population >= 2 and 1 <= sample <= population, "
                                               f"got {self.population} and {self.sample}")
        if self.offspring < 1:
            raise ConfigError("search.offspring", f"must be >= 1, got {self.offspring}")
        if self.mutation not in ("reshuffle", "swap"):
            raise ConfigError("search.mutation", f"must be 'reshuffle' or 'swap', got {self.mutation!r}")
        if self.start not in ("random", "dependence"):
            raise ConfigError("search.start", f"must be 'random' or 'dependence', got {self.start!r}")

    def _mutate(self, structure: Structure) -> Structure:
        if self.mutation == "reshuffle":
            return modify(structure, self.rng, self.geometric_p)
        count = min(int(self.rng.geometric(self.geometric_p)), 2 * self.depth)
        return swap(structure, self.rng, None if self.dependence is None else self.dependence.weight, count,
                    self.explore)

    def initial(self) -> list[Structure]:
        if self.start == "random":
            return [self.random_structure() for _ in range(self.population)]
        if self.dependence is None:
            raise ConfigError("search.start", "dependence needs the features' dependence matrix")
        first = self.dependence.structure(self.m, self.depth, self.seed)
        return [first] + [self._mutate(first) for _ in range(self.population - 1)]

    def propose(self) -> list[Proposal]:
        children = []
        members = list(self._members)
        for _ in range(self.offspring):
            drawn = [members[i] for i in self.rng.choice(len(members), size=min(self.sample, len(members)),
                                                         replace=False)]
            parent = min(drawn, key=lambda t: (t.value, t.number))
            children.append(Proposal(self._mutate(parent.structure), parent.number))
        return children

    def select(self, complete: list[Trial]) -> Trial | None:
        for trial in sorted(complete, key=lambda t: t.number):
            self._members.append(trial)
            while len(self._members) > self.population:
                self._members.popleft()
        return super().select(complete)

    @property
    def done(self) -> bool:
        # a population of diverged trials has no parent to mutate
        return super().done or (self.best is not None and not self._members)
