"""The ask/tell contract every structure optimizer follows.

An optimizer proposes structures (:meth:`StructureOptimizer.ask`); the evaluation
(:mod:`flowsweep.search.evaluation`) trains and scores them, and the results come back
through :meth:`StructureOptimizer.tell` with a state: complete, or diverged (never
dropped). How a trial is trained and scored is the evaluation's business, not the
optimizer's. The base class owns the history, the best-so-far and the stopping rules;
a concrete optimizer implements :meth:`StructureOptimizer.propose`, and may replace
the first structures (:meth:`StructureOptimizer.initial`) and the acceptance rule
(:meth:`StructureOptimizer.select`).

A new optimizer is one subclass plus one YAML file in ``conf/search/`` whose
``_target_`` names it; its extra keys become constructor arguments.
"""

from __future__ import annotations

import enum
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Optional, Sequence

import numpy as np

from flowsweep.config import ConfigError
from flowsweep.structure.dependence import Dependence
from flowsweep.structure import Structure, random_structure

__all__ = ["TrialState", "Trial", "Proposal", "StructureOptimizer"]


class TrialState(enum.Enum):
    """Where a trial stands: not told yet, complete (its value counts), diverged, or pruned (stopped
    by :meth:`StructureOptimizer.prune` before its training ended; its value, the best before that,
    is recorded but never accepted)."""

    PENDING = "pending"
    COMPLETE = "complete"
    DIVERGED = "diverged"
    PRUNED = "pruned"


@dataclass
class Trial:
    """One structure to evaluate and, once told, its value (bpd) and state.

    ``steps`` (null: the evaluation's) is the trial's fidelity; ``resume`` names an earlier
    trial of the same structure whose trained parameters this one continues from; a ``final``
    trial is trained as the final model is (``train.*``, early stopping included, from the
    instance's own seed) and, accepted, *is* the final model. Where the
    evaluation scores on the validation split, ``rows`` holds the bpd of each validation row
    (the mean over the replicas), for paired comparisons.
    """

    number: int
    iteration: int
    structure: Structure
    parent: Optional[int] = None
    value: float = math.inf
    state: TrialState = TrialState.PENDING
    accepted: bool = False
    steps: Optional[int] = None
    resume: Optional[int] = None
    final: bool = False
    rows: Optional[np.ndarray] = field(default=None, repr=False)
    #: Model-steps the trial cost (all its replicas; fewer where it stopped early), set by the runner.
    model_steps: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "t": self.iteration,
            "parent": self.parent,
            "steps": self.steps,
            "resume": self.resume,
            "final": self.final,
            "model_steps": self.model_steps,
            "conditioning": [list(layer) for layer in self.structure.conditioning],
            "value": self.value if math.isfinite(self.value) else None,
            "state": self.state.value,
            "accepted": self.accepted,
        }


@dataclass
class Proposal:
    """A structure an optimizer proposes, with what it descends from (``parent``, default the
    best), its fidelity (``steps``, default the evaluation's), the earlier trial whose
    parameters it continues (``resume``) and whether it is trained as the final model (``final``)."""

    structure: Structure
    parent: Optional[int] = None
    steps: Optional[int] = None
    resume: Optional[int] = None
    final: bool = False


@dataclass
class StructureOptimizer(ABC):
    """Base of all structure optimizers: one search for one model instance.

    Arguments (from ``conf/search/*.yaml``, plus ``d``, ``m``, ``depth``, ``seed`` and, for the
    optimizers that read it, ``dependence``):
        name: Label logged as the ``search`` param.
        iterations: Iterations ``T`` after the initial one (``0`` evaluates the initial structures only).
        patience: Stop after this many iterations without improvement (null: never).
        dependence: The features' estimated :class:`~flowsweep.structure.dependence.Dependence`, given by the job
            to the optimizers that declare ``uses_dependence``.
    """

    #: Whether the job must compute the features' dependence matrix for this optimizer.
    uses_dependence: ClassVar[bool] = False
    #: Whether all trials' values are of one fidelity, so that :attr:`best_trace` is a best-so-far
    #: (logged as ``search_best_bpd``); otherwise it is each iteration's best (``search_iteration_best_bpd``).
    one_fidelity: ClassVar[bool] = True
    d: int
    m: int
    depth: int
    seed: int
    name: str = "search"
    iterations: int = 200
    patience: Optional[int] = None
    dependence: Optional[Dependence] = field(default=None, repr=False)
    history: list[Trial] = field(default_factory=list, init=False)
    best: Optional[Trial] = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.check()
        self.rng = np.random.default_rng(self.seed)
        self.iteration = 0
        self._since_improvement = 0
        self._pending: list[Trial] = []
        #: The value the search holds for its best after each iteration: the best so far where
        #: :attr:`one_fidelity`, else what :meth:`select` made of that iteration.
        self.best_trace: list[float] = []

    def check(self) -> None:
        """Validate settings; subclasses extend it. Raises :class:`ConfigError`."""
        if self.iterations < 0:
            raise ConfigError("search.iterations", f"must be >= 0, got {self.iterations}")
        if self.patience is not None and self.patience < 1:
            raise ConfigError("search.patience", f"must be >= 1 or null, got {self.patience}")

    # -- the hooks ------------------------------------------------------------------

    @abstractmethod
    def propose(self) -> Sequence[Structure | Proposal]:
        """Structures to evaluate in iteration ``self.iteration >= 1`` (``self.best`` is set), each
        alone (its parent is the best) or as a :class:`Proposal`."""

    def initial(self) -> Sequence[Structure | Proposal]:
        """Structures of iteration 0: one uniformly random structure (Algorithm 1)."""
        return [self.random_structure()]

    def prune(self, step: int, values: Mapping[int, float], training: set[int]) -> set[int]:
        """Final trials to stop after ``step`` steps of their training (the race of
        :class:`~flowsweep.search.halving.Halving`): called at every validation evaluation with
        each final trial's best validation bpd so far (``values``, by trial number; ``inf``
        where it diverged) and the numbers of those still training; the ones returned stop
        there and are told :attr:`TrialState.PRUNED`. Default: none."""
        return set()

    def select(self, complete: list[Trial]) -> Optional[Trial]:
        """The trial of this iteration that becomes the best, if any: the lowest value when it is
        ``<=`` the best's (ties accepted, as in Algorithm 1)."""
        winner = min(complete, key=lambda t: (t.value, t.number)) if complete else None
        if winner is not None and (self.best is None or winner.value <= self.best.value):
            return winner
        return None

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
        proposed = self.initial() if self.best is None else self.propose()
        best = None if self.best is None else self.best.number
        proposals = [p if isinstance(p, Proposal) else Proposal(p, best) for p in proposed]
        self._pending = [Trial(len(self.history) + i, self.iteration, p.structure, p.parent, steps=p.steps,
                               resume=p.resume, final=p.final) for i, p in enumerate(proposals)]
        return list(self._pending)

    def tell(self, trials: Sequence[Trial]) -> None:
        """Record the asked trials with their values and states; update the best-so-far.

        A non-finite value counts as diverged; a diverged trial is recorded but never accepted;
        :meth:`select` picks the new best among the complete ones (an optimizer that prunes may
        also take a pruned trial it still holds by its value: Halving's references).
        """
        if sorted(t.number for t in trials) != sorted(t.number for t in self._pending):
            raise ValueError("tell() needs exactly the trials of the last ask()")
        for trial in trials:
            if trial.state is TrialState.PENDING:
                raise ValueError(f"trial {trial.number} was told without a state")
            if not math.isfinite(trial.value) and trial.state is not TrialState.PRUNED:
                trial.state = TrialState.DIVERGED
        previous = self.best.value if self.best is not None else math.inf
        winner = self.select([t for t in trials if t.state is TrialState.COMPLETE])
        if winner is not None:
            winner.accepted = True
            self.best = winner
        improved = self.best is not None and self.best_value < previous
        self.history.extend(sorted(trials, key=lambda t: t.number))
        if self.iteration > 0:
            self._since_improvement = 0 if improved else self._since_improvement + 1
        self.best_trace.append(self.best_value)
        self._pending = []
        self.iteration += 1

    @property
    def best_value(self) -> float:
        """The value the search holds for its best structure (``inf`` before any complete trial)."""
        return self.best.value if self.best is not None else math.inf
