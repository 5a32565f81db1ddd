"""Successive halving over a field of candidates from the dependence structure (multi-fidelity).

Short trials rank structures poorly (README: Structure search); long ones are expensive.
Successive halving spends the budget where it decides something: the first rung trains
``candidates`` structures for a few steps, every later rung continues the best
``1/eta`` of the previous one (their parameters, a fresh optimizer) for more steps, and
the best of the last rung wins. The field is the dependence structure
(:meth:`Dependence.structure <flowsweep.dependence.Dependence.structure>`), swaps of it drawn by dependence
(:func:`~flowsweep.search.guided.swap`), and a share of uniformly random structures;
with ``keep_start`` the dependence structure reaches the last rung whatever its early
values, so the search ends below its start only where long training says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Optional

from flowsweep.config import ConfigError
from flowsweep.dependence import dependence_structure
from flowsweep.search.base import Proposal, StructureOptimizer, Trial, TrialState
from flowsweep.search.guided import swap
from flowsweep.structure import Structure

__all__ = ["Halving"]

#: Discounts of the field's other dependence structures (the job's own is the start).
_DISCOUNTS = (0.0, 0.25, 0.75, 1.0)


@dataclass
class Halving(StructureOptimizer):
    """Successive halving (see the module docstring); ``iterations`` is the number of rungs after the first.

    Arguments:
        candidates: Structures in the first rung.
        rungs: Steps each rung trains, continuing the previous rung's parameters.
        eta: Each rung keeps the best ``ceil(n / eta)`` of the previous one.
        keep_start: The dependence structure is promoted to every rung (in the place of the last
            one that would have been).
        random_share: Share of the first rung drawn uniformly at random (the rest: swaps of the start).
        swap_p: Swaps per candidate ``~ Geometric(swap_p)``.
        explore: Probability that a swap is drawn uniformly.
    """

    uses_dependence: ClassVar[bool] = True
    candidates: int = 32
    rungs: list[int] = field(default_factory=lambda: [100, 400, 1600])
    eta: int = 4
    keep_start: bool = True
    random_share: float = 0.25
    swap_p: float = 0.5
    explore: float = 0.25

    def __post_init__(self) -> None:
        super().__post_init__()
        self.iterations = len(self.rungs) - 1
        self._start: Optional[Trial] = None

    @property
    def budget(self) -> int:
        """Trials' steps of the whole search (times the evaluation's replicas: its model-steps)."""
        return sum(math.ceil(self.candidates / self.eta**r) * int(s) for r, s in enumerate(self.rungs))

    def check(self) -> None:
        super().check()
        if self.candidates < 1:
            raise ConfigError("search.candidates", f"must be >= 1, got {self.candidates}")
        if not self.rungs or any(int(s) < 1 for s in self.rungs):
            raise ConfigError("search.rungs", f"needs one or more step counts >= 1, got {self.rungs}")
        if self.eta < 2:
            raise ConfigError("search.eta", f"must be >= 2, got {self.eta}")
        if not 0.0 <= self.random_share <= 1.0:
            raise ConfigError("search.random_share", f"must be in [0, 1], got {self.random_share}")

    def initial(self) -> list[Proposal]:
        if self.dependence is None:
            raise ConfigError("search", f"{type(self).__name__} needs the features' dependence matrix")
        start = self.dependence.structure(self.m, self.depth, self.seed)
        randoms = round(self.random_share * (self.candidates - 1))
        field_ = list(dict.fromkeys([start, *self._variants(start)]))[: self.candidates - randoms]
        while len(field_) < self.candidates - randoms:
            count = min(int(self.rng.geometric(self.swap_p)), 2 * self.depth)
            field_.append(swap(start, self.rng, self.dependence.weight, count, self.explore))
        field_ += [self.random_structure() for _ in range(self.candidates - len(field_))]
        return [Proposal(s, None, steps=int(self.rungs[0])) for s in field_]

    def _variants(self, start: Structure) -> list[Structure]:
        """Other readings of the same dependence: the masks with other discounts (from covering each
        pair once to repeating the strongest), and the start's first one, two or three layers repeated
        in turn (a chain needs two complementary splits, alternating)."""
        weight = self.dependence.weight
        others = [dependence_structure(weight, self.m, self.depth, discount, self.seed) for discount in _DISCOUNTS]
        cycles = [Structure(start.d, start.m, tuple(start.conditioning[l % k] for l in range(self.depth)))
                  for k in (1, 2, 3) if k < self.depth]
        return others + cycles

    def propose(self) -> list[Proposal]:
        previous = [t for t in self.history if t.iteration == self.iteration - 1 and t.state is TrialState.COMPLETE]
        previous.sort(key=lambda t: (t.value, t.number))
        # The rung sizes follow the field's, so the budget is known in advance; the start takes
        # the last place where it would not have made it.
        promoted = previous[: math.ceil(self.candidates / self.eta**self.iteration)]
        start = [t for t in previous if self._start is not None and t.structure == self._start.structure]
        if self.keep_start and start and start[0] not in promoted:
            promoted[-1:] = [start[0]]
        steps = int(self.rungs[self.iteration])
        return [Proposal(t.structure, t.number, steps=steps, resume=t.number) for t in promoted]

    def select(self, complete: list[Trial]) -> Optional[Trial]:
        if self._start is None and complete and self.iteration == 0:
            first = [t for t in complete if t.number == 0]
            self._start = first[0] if first else None
        # Values of different rungs are not comparable (more training, lower bpd): the best
        # is the lowest of the latest rung.
        return min(complete, key=lambda t: (t.value, t.number)) if complete else None

    @property
    def done(self) -> bool:
        ran_dry = self.iteration > 0 and not any(
            t.state is TrialState.COMPLETE for t in self.history if t.iteration == self.iteration - 1)
        return super().done or ran_dry
