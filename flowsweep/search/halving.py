"""Successive halving over a field of candidates from the dependence structure (multi-fidelity).

Short trials rank structures poorly (docs/search.md); long ones are expensive.
Successive halving spends the budget where it decides something: the first rung trains
``candidates`` structures for a few steps, every middle rung continues the best
``1/eta`` of the previous one (their parameters, a fresh optimizer) for more steps, the
last rung the best ``finalists``, and the best of the last rung wins. With ``final`` the
last rung *is* the final training: its finalists are trained as a fixed layout's model
is (``train.*`` with early stopping, from the instance's seed), each is scored at its best
validation step, and the winner's parameters are the final model — short training can
rank two structures the other way round from where they converge (docs/structure-search.md),
and the final rung ranks them where they converge without spending that budget twice.

The field is the dependence structure (:meth:`Dependence.structure
<flowsweep.structure.dependence.Dependence.structure>`), parity masks, other structures of
the same dependence (other discounts; its first layers repeated in turn), whole-layer
changes of it that the dependence measure cannot rank (one layer's split in every layer,
one layer's sides flipped, the layers reversed or rotated), swaps of it drawn by
dependence (:func:`~flowsweep.search.guided.swap`), and a share of uniformly random
structures. The structures named in ``keep`` (by default the dependence structure and
parity) reach the last rung whatever their early values, so the search picks another only
where long training says it is better.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import chain, zip_longest
from typing import Any, ClassVar, Mapping, Optional, Sequence

from flowsweep.config import ConfigError
from flowsweep.structure.dependence import dependence_structure
from flowsweep.search.base import Proposal, StructureOptimizer, Trial, TrialState
from flowsweep.search.guided import swap
from flowsweep.structure import Structure, parity_structure
from flowsweep.structure.moves import whole_layer_changes

__all__ = ["Halving", "cut_schedule_problem"]

#: Discounts of the field's other dependence structures (the job's own is the start).
_DISCOUNTS = (0.0, 0.25, 0.75, 1.0)
#: What ``keep`` may name.
_KEEPABLE = ("dependence", "parity")


@dataclass
class Halving(StructureOptimizer):
    """Successive halving (see the module docstring); ``iterations`` is the number of rungs after the first.

    Arguments:
        candidates: Structures in the first rung.
        rungs: Steps each trial rung trains, continuing the previous rung's parameters.
        final: The last rung is the final training (one more rung after ``rungs``): its
            ``finalists`` are trained with ``train.*`` and the winner's parameters are the final
            model. Otherwise the last of ``rungs`` holds the finalists, and the winner is trained
            again from scratch.
        eta: Each middle rung keeps the best ``ceil(n / eta)`` of the previous one.
        finalists: Structures in the last rung (with no trial rungs, ``rungs: []``, the whole field:
            ``candidates``).
        cuts: Successive halving inside the final rung (``final``): pairs ``[step, k]``, at the
            first validation evaluation at or after ``step`` steps of ``train.*`` only the ``k``
            best by validation bpd so far train on (the kept structures among them, each in the
            place of the last that would have); the others stop there, pruned. Every finalist
            runs the same recipe from the same seed, so at a cut they differ by their structure
            alone.
        keep: Structures that reach every rung whatever their early values, each in the place
            of the last that would have: ``dependence`` (the start) and ``parity`` (the paper's
            heuristic), so the search picks another only where long training says it is better.
        references: The heuristics that stand in the last rung (``dependence``, ``parity``; null:
            those of ``keep``), in turn: the first stands, each next one takes its place only if
            clearly better (``margin``), and then the best finisher only if clearly better than the
            one standing. A reference the cuts pruned stands with its best value before the cut.
        margin: In the last rung, a structure that is not a reference wins over the reference only
            if its validation bpd is lower by more than ``margin`` standard errors of the paired
            per-row difference (0: the lowest value wins).
        small_split_rows, small_split_margin: Where the validation split holds fewer than
            ``small_split_rows`` rows, the margin is ``small_split_margin`` instead: a small split
            (sonar's 19 rows) cannot tell a lucky challenger from a better one, and the rows that
            would show it are not there (``python -m flowsweep.bench margins``).
        random_share: Share of the first rung drawn uniformly at random (the rest: other readings
            of the dependence and swaps of the start).
        swap_p: Swaps per candidate ``~ Geometric(swap_p)``.
        explore: Probability that a swap is drawn uniformly.
    """

    uses_dependence: ClassVar[bool] = True
    one_fidelity: ClassVar[bool] = False
    candidates: int = 32
    rungs: list[int] = field(default_factory=lambda: [50, 250])
    final: bool = True
    eta: int = 4
    finalists: int = 3
    cuts: list[list[int]] = field(default_factory=list)
    keep: list[str] = field(default_factory=lambda: ["dependence", "parity"])
    references: Optional[list[str]] = None
    margin: float = 2.0
    small_split_rows: int = 0
    small_split_margin: float = 2.0
    random_share: float = 0.25
    swap_p: float = 0.5
    explore: float = 0.25

    def __post_init__(self) -> None:
        super().__post_init__()
        self.iterations = len(self.rungs) - 1 + int(self.final)
        self._kept: list[Structure] = []
        self._references: list[Structure] = []
        self._cut = 0  # cuts of the final rung made so far
        self._pruned: set[int] = set()  # its trials they stopped (the runner tells them PRUNED)

    def size(self, rung: int) -> int:
        """Structures trained in ``rung``."""
        if rung == 0:
            return self.candidates
        if rung == self.iterations:
            return self.finalists
        return math.ceil(self.candidates / self.eta**rung)

    @property
    def budget(self) -> int:
        """Steps of the trial rungs (times the evaluation's replicas: their model-steps); with
        ``final``, the final rung adds at most :meth:`final_budget`."""
        return sum(self.size(r) * int(s) for r, s in enumerate(self.rungs))

    def final_budget(self, steps: int) -> int:
        """The most model-steps the final rung can spend with ``steps`` (``train.steps``) each:
        every finalist to the first cut, the survivors of each cut to the next, the last to the end."""
        if not self.final:
            return 0
        total, alive, done = 0, self.size(self.iterations), 0
        for step, k in self.cuts:
            reach = min(int(step), steps)
            total += alive * (reach - done)
            alive, done = min(alive, int(k)), reach
        return total + alive * (steps - done)

    def check(self) -> None:
        super().check()
        for key in ("margin", "small_split_margin"):
            if getattr(self, key) < 0:
                raise ConfigError(f"search.{key}", f"must be >= 0, got {getattr(self, key)}")
        if self.small_split_rows < 0:
            raise ConfigError("search.small_split_rows", f"must be >= 0, got {self.small_split_rows}")
        if self.candidates < 1:
            raise ConfigError("search.candidates", f"must be >= 1, got {self.candidates}")
        if not isinstance(self.final, bool):
            raise ConfigError("search.final", f"must be true or false, got {self.final!r}")
        if not _is_list(self.rungs) or any(not isinstance(s, int) or s < 1 for s in self.rungs):
            raise ConfigError("search.rungs", f"must be a list of step counts >= 1, got {self.rungs}")
        if not self.rungs and not self.final:
            raise ConfigError("search.rungs", "needs one or more step counts when search.final=false")
        if not self.rungs and self.finalists != self.candidates:
            raise ConfigError("search.finalists", f"with no trial rungs (search.rungs=[]) the final rung trains the "
                                                  f"whole field: set it to search.candidates ({self.candidates}), "
                                                  f"got {self.finalists}")
        self._check_cuts()
        if self.eta < 2:
            raise ConfigError("search.eta", f"must be >= 2, got {self.eta}")
        for key, names in (("search.keep", self.keep), ("search.references", self.references or [])):
            unknown = sorted(set(names) - set(_KEEPABLE))
            if unknown:
                raise ConfigError(key, f"unknown {unknown}; choose from {list(_KEEPABLE)}")
        if not len(self.keep) <= self.finalists <= self.candidates:
            raise ConfigError("search.finalists", f"must be in {len(self.keep)}..{self.candidates} "
                                                  f"(search.keep holds {len(self.keep)}), got {self.finalists}")
        if not 0.0 <= self.random_share <= 1.0:
            raise ConfigError("search.random_share", f"must be in [0, 1], got {self.random_share}")

    def _check_cuts(self) -> None:
        problem = cut_schedule_problem(self.cuts)
        if problem:
            raise ConfigError("search.cuts", problem)
        if self.cuts and not self.final:
            raise ConfigError("search.cuts", "cut the final rung: they need search.final=true")
        if self.cuts and self.cuts[-1][1] < len(self.keep):
            raise ConfigError("search.cuts", f"the last k must hold the {len(self.keep)} kept structures "
                                             f"(search.keep), got {self.cuts}")

    def initial(self) -> list[Proposal]:
        if self.dependence is None:
            raise ConfigError("search", f"{type(self).__name__} needs the features' dependence matrix")
        start = self.dependence.structure(self.m, self.depth, self.seed)
        kept = {"dependence": start, "parity": parity_structure(self.d, self.m, self.depth)}
        self._kept = list(dict.fromkeys(kept[name] for name in self.keep))
        self._references = list(dict.fromkeys(kept[name] for name in (self.keep if self.references is None
                                                                       else self.references)))
        randoms = round(self.random_share * (self.candidates - 1))
        field_ = list(dict.fromkeys([start, kept["parity"], *self._variants(start)]))[: self.candidates - randoms]
        while len(field_) < self.candidates - randoms:
            count = min(int(self.rng.geometric(self.swap_p)), 2 * self.depth)
            field_.append(swap(start, self.rng, self.dependence.weight, count, self.explore))
        field_ += [self.random_structure() for _ in range(self.candidates - len(field_))]
        if self.iterations == 0:  # no trial rungs: the field is the final rung
            return [Proposal(s, None, final=True) for s in field_]
        return [Proposal(s, None, steps=int(self.rungs[0])) for s in field_]

    def _variants(self, start: Structure) -> list[Structure]:
        """Other readings of the same dependence: the masks with other discounts (from covering each
        pair once to repeating the strongest), and the start's first one, two or three layers repeated
        in turn (a chain needs two complementary splits, alternating); then, taking turns so that a
        short field holds some of each, the whole-layer changes of :func:`~flowsweep.structure.moves.whole_layer_changes`."""
        weight = self.dependence.weight
        others = [dependence_structure(weight, self.m, self.depth, discount, self.seed) for discount in _DISCOUNTS]
        cycles = [Structure(start.d, start.m, tuple(start.conditioning[l % k] for l in range(self.depth)))
                  for k in (1, 2, 3) if k < self.depth]
        moves = [s for s in chain.from_iterable(zip_longest(*whole_layer_changes(start))) if s is not None]
        return others + cycles + moves

    def propose(self) -> list[Proposal]:
        previous = [t for t in self.history if t.iteration == self.iteration - 1 and t.state is TrialState.COMPLETE]
        previous.sort(key=lambda t: (t.value, t.number))
        # The rung sizes are fixed, so the budget is known in advance; a kept structure takes
        # the last place of those that are not kept where it would not have made it.
        promoted = previous[: self.size(self.iteration)]
        for structure in self._kept:
            trial = next((t for t in previous if t.structure == structure), None)
            if trial is None or trial in promoted:
                continue
            free = [k for k, t in enumerate(promoted) if t.structure not in self._kept]
            if free:
                promoted[free[-1]] = trial
            else:
                promoted.append(trial)
        if self.final and self.iteration == self.iterations:
            return [Proposal(t.structure, t.number, final=True) for t in promoted]
        steps = int(self.rungs[self.iteration])
        return [Proposal(t.structure, t.number, steps=steps, resume=t.number) for t in promoted]

    def prune(self, step: int, values: Mapping[int, float], training: set[int]) -> set[int]:
        # The final rung's cuts: rank every finalist not pruned yet by its best value so far
        # (one that stopped early keeps its place: its value is final, the others' can only fall).
        due = [k for s, k in self.cuts[self._cut:] if s <= step]
        if not due:
            return set()
        self._cut += len(due)
        trials = {t.number: t for t in self._pending}
        standing = sorted((n for n, v in values.items() if n in trials and math.isfinite(v) and n not in self._pruned),
                          key=lambda n: (values[n], n))
        survivors = standing[: due[-1]]
        for structure in self._kept:
            number = next((n for n in standing if trials[n].structure == structure), None)
            if number is None or number in survivors:
                continue
            free = [k for k, n in enumerate(survivors) if trials[n].structure not in self._kept]
            if free:
                survivors[free[-1]] = number
        stopped = training - set(survivors)
        self._pruned |= stopped
        return stopped

    def select(self, complete: list[Trial]) -> Optional[Trial]:
        # Values of different rungs are not comparable (more training, lower bpd): the best
        # is the lowest of the latest rung. In the last rung the references stand in turn (in
        # the order of ``references``), then the best finisher: each takes the place of the one
        # standing only if clearly better. A reference the cuts stopped with a finite value
        # still stands (its value is its best, final): a cut is a guess, the margin a test.
        finishers = sorted(complete, key=lambda t: (t.value, t.number))[:1]
        margin = self.margin_for(complete)
        if self.iteration < self.iterations or not margin:
            return finishers[0] if finishers else None
        told = {t.number: t for t in chain(self._pending, complete)}.values()
        standing = [t for structure in self._references for t in told
                    if t.structure == structure and math.isfinite(t.value)
                    and t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        if not standing:
            return finishers[0] if finishers else None
        winner = standing[0]
        for challenger in [*standing[1:], *finishers]:
            if challenger is not winner and _clearly_better(challenger, winner, margin):
                winner = challenger
        return winner

    def margin_for(self, trials: Sequence[Trial]) -> float:
        """The margin of the last rung for ``trials`` scored on the validation split: ``small_split_margin``
        where their rows are fewer than ``small_split_rows``, else ``margin``."""
        rows = next((t.rows for t in trials if t.rows is not None), None)
        return self.small_split_margin if rows is not None and len(rows) < self.small_split_rows else self.margin

    @property
    def done(self) -> bool:
        ran_dry = self.iteration > 0 and not any(
            t.state is TrialState.COMPLETE for t in self.history if t.iteration == self.iteration - 1)
        return super().done or ran_dry


def _clearly_better(challenger: Trial, incumbent: Trial, margin: float) -> bool:
    """Whether ``challenger``'s validation bpd is lower than ``incumbent``'s by more than ``margin``
    standard errors of their paired per-row difference (by value where no rows)."""
    if challenger.rows is None or incumbent.rows is None or len(challenger.rows) < 2:
        return challenger.value < incumbent.value
    gap = challenger.rows.astype(float) - incumbent.rows.astype(float)
    error = gap.std(ddof=1) / math.sqrt(len(gap))
    return bool(gap.mean() < -margin * error)


def cut_schedule_problem(cuts: Any) -> Optional[str]:
    """What is wrong with a cut schedule ``[[step, k], ...]`` (``search.cuts``; ``None``:
    nothing): it needs pairs of integers >= 1, rising steps and falling k."""
    shaped = _is_list(cuts) and all(
        _is_list(c) and len(c) == 2 and all(isinstance(v, int) and v >= 1 for v in c) for c in cuts)
    if not shaped:
        return f"must be a list of [step, k] pairs of integers >= 1, got {cuts}"
    steps, ks = [c[0] for c in cuts], [c[1] for c in cuts]
    if steps != sorted(set(steps)) or ks != sorted(ks, reverse=True):
        return f"need rising steps and falling k, got {cuts}"
    return None


def _is_list(value: object) -> bool:
    """A list of a config (a ListConfig where Hydra left one) or of Python."""
    return isinstance(value, Sequence) and not isinstance(value, str)
