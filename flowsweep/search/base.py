"""The ask/tell contract every structure optimizer follows.

An optimizer proposes structures (:meth:`StructureOptimizer.ask`), the engine trains
and scores them as one batch of models, and the results come back through
:meth:`StructureOptimizer.tell` with a state: complete, or diverged (never dropped).
The base class owns the history, the best-so-far, the acceptance rule and the
stopping rules; a concrete optimizer implements :meth:`StructureOptimizer.propose`.

A new optimizer is one subclass plus one YAML file in ``conf/search/`` whose
``_target_`` names it; its extra keys become constructor arguments.
"""

from __future__ import annotations

import enum
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from flowsweep.config import ConfigError
from flowsweep.structure import Structure, random_structure

__all__ = ["TrialState", "Trial", "StructureOptimizer", "WARM_STARTS", "VALUES"]

#: How an offspring's parameters start: new ones, all of its parent's, or the parent's
#: for the layers whose mask did not change.
WARM_STARTS = ("fresh", "parent", "inherit")
#: What a trial is scored by: bpd of the last training minibatch (the paper) or of the
#: dataset's validation split (``dataset.validation_fraction`` of the training rows).
VALUES = ("last_batch", "validation")


class TrialState(enum.Enum):
    PENDING = "pending"
    COMPLETE = "complete"
    DIVERGED = "diverged"


@dataclass
class Trial:
    """One structure to evaluate and, once told, its value (bpd) and state."""

    number: int
    iteration: int
    structure: Structure
    parent: Optional[int] = None
    value: float = math.inf
    state: TrialState = TrialState.PENDING
    accepted: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "t": self.iteration,
            "parent": self.parent,
            "conditioning": [list(layer) for layer in self.structure.conditioning],
            "value": self.value if math.isfinite(self.value) else None,
            "state": self.state.value,
            "accepted": self.accepted,
        }


@dataclass
class StructureOptimizer(ABC):
    """Base of all structure optimizers: one search for one model instance.

    Arguments (from ``conf/search/*.yaml``, plus ``d``, ``m``, ``depth``, ``seed``):
        name: Label logged as the ``search`` param.
        iterations: Iterations ``T`` after the initial structure (``0`` evaluates it only).
        steps_per_trial: SGD steps that train each candidate.
        warm_start: One of :data:`WARM_STARTS`.
        value: One of :data:`VALUES`.
        patience: Stop after this many iterations without improvement (null: never).
    """

    d: int
    m: int
    depth: int
    seed: int
    name: str = "search"
    iterations: int = 200
    steps_per_trial: int = 50
    warm_start: str = "fresh"
    value: str = "last_batch"
    patience: Optional[int] = None
    history: list[Trial] = field(default_factory=list, init=False)
    best: Optional[Trial] = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.check()
        self.rng = np.random.default_rng(self.seed)
        self.iteration = 0
        self._since_improvement = 0
        self._pending: list[Trial] = []
        #: Best-so-far value after each iteration.
        self.best_trace: list[float] = []

    def check(self) -> None:
        """Validate settings; subclasses extend it. Raises :class:`ConfigError`."""
        if self.iterations < 0:
            raise ConfigError("search.iterations", f"must be >= 0, got {self.iterations}")
        if self.steps_per_trial < 1:
            raise ConfigError("search.steps_per_trial", f"must be >= 1, got {self.steps_per_trial}")
        if self.warm_start not in WARM_STARTS:
            raise ConfigError("search.warm_start", f"must be one of {WARM_STARTS}, got {self.warm_start!r}")
        if self.value not in VALUES:
            raise ConfigError("search.value", f"must be one of {VALUES}, got {self.value!r}")
        if self.patience is not None and self.patience < 1:
            raise ConfigError("search.patience", f"must be >= 1 or null, got {self.patience}")

    # -- the hook -------------------------------------------------------------------

    @abstractmethod
    def propose(self) -> list[Structure]:
        """Structures to evaluate in the current iteration (``self.best`` is set after iteration 0)."""

    # -- ask / tell -----------------------------------------------------------------

    @property
    def last_iteration(self) -> int:
        """Index of the final iteration: the initial one is 0, then 1..T."""
        return self.iterations

    @property
    def done(self) -> bool:
        stalled = self.patience is not None and self._since_improvement >= self.patience
        return self.iteration > self.last_iteration or stalled

    def random_structure(self) -> Structure:
        return random_structure(self.d, self.m, self.depth, self.rng)

    def ask(self) -> list[Trial]:
        """The trials of the next iteration; empty once the search is done."""
        if self._pending:
            raise RuntimeError("tell() the previous trials before asking again")
        if self.done:
            return []
        structures = [self.random_structure()] if self.best is None else self.propose()
        parent = None if self.best is None else self.best.number
        self._pending = [
            Trial(len(self.history) + i, self.iteration, s, parent) for i, s in enumerate(structures)
        ]
        return list(self._pending)

    def tell(self, trials: Sequence[Trial]) -> None:
        """Record the asked trials with their values and states; update the best-so-far.

        The lowest complete trial is accepted when its value is ``<=`` the best's (ties
        accepted, as in Algorithm 1). A non-finite value counts as diverged, and a
        diverged trial is recorded but never accepted.
        """
        if sorted(t.number for t in trials) != sorted(t.number for t in self._pending):
            raise ValueError("tell() needs exactly the trials of the last ask()")
        for trial in trials:
            if trial.state is TrialState.PENDING:
                raise ValueError(f"trial {trial.number} was told without a state")
            if not math.isfinite(trial.value):
                trial.state = TrialState.DIVERGED
        complete = [t for t in trials if t.state is TrialState.COMPLETE]
        winner = min(complete, key=lambda t: (t.value, t.number)) if complete else None
        improved = False
        if winner is not None and (self.best is None or winner.value <= self.best.value):
            improved = self.best is None or winner.value < self.best.value
            winner.accepted = True
            self.best = winner
        self.history.extend(sorted(trials, key=lambda t: t.number))
        if self.iteration > 0:
            self._since_improvement = 0 if improved else self._since_improvement + 1
        self.best_trace.append(self.best.value if self.best is not None else math.inf)
        self._pending = []
        self.iteration += 1
