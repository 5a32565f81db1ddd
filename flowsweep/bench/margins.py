"""Who wins the default race: the references' margin rule (``search.margin``) replayed.

``python -m flowsweep.bench margins`` runs, for every instance of each dataset, the default
search's race as a ``layout=opt`` job runs it (the field, the cuts, early stopping, the
instance's seed: :func:`flowsweep.search.runner.train_finals` with the real optimizers), once.
Then it asks each instance's optimizer which trial wins (:meth:`Halving.select
<flowsweep.search.halving.Halving.select>`) at every margin asked, on the same trained
models, and prints per dataset and margin:

- how often the winner is the start (``layout=dependence``'s own model), parity, or another;
- **validation only**: the rule applied to a random half of the validation rows (A) and the
  winner scored on the other half (B), against the start and against ``layout=parity``: what a
  user may choose the margin by;
- on the test rows, for the record: the winner against the start (paired by instance, the
  standard error of the difference and z) and against ``layout=parity`` trained alone.

The models are trained once for all margins, so the rows differ by the rule alone. A margin
of 0 takes the lowest validation value; a large one keeps the references (parity, then the
start). The margin replayed is ``search.margin``: where the validation split holds fewer than
``search.small_split_rows`` rows, ``search.small_split_margin`` stands whatever it is (replay a
small split's with ``search.small_split_rows=0``). See docs/structure-search.md for what it
measured.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from flowsweep.app.plan import plan_job
from flowsweep.config import ConfigError
from flowsweep.config.compose import compose_config
from flowsweep.model import CouplingFlows
from flowsweep.search.base import Trial, TrialState
from flowsweep.search.evaluation import Evaluation
from flowsweep.search.halving import Halving
from flowsweep.search.job import build_optimizers, job_dependence
from flowsweep.search.runner import SearchSettings, tell_scores, train_finals
from flowsweep.seeding import torch_generator
from flowsweep.structure import parity_structure
from flowsweep.training import Recipe, row_bpd, train

__all__ = ["DATASETS", "MARGINS", "Race", "run_race", "winner", "margin_table"]

#: Where the rule decides something: two benchmarks whose start is (nearly) the best known
#: structure, and the two UCI tables with small validation splits (sonar: 19 rows).
DATASETS = ("synthetic_hetero", "synthetic_pairs", "yeast", "sonar")
MARGINS = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)


@dataclass
class Race:
    """One dataset's races, trained: per instance its optimizer and told final trials, the bpd of
    every trial's validation rows ``[trials, v]`` and test rows ``[trials, t]`` at the parameters
    the race left it (a pruned trial: its best before the cut), and ``layout=parity``'s
    validation and test rows ``[v]``, ``[t]``, trained alone."""

    optimizers: list[Halving]
    trials: list[list[Trial]]
    valid: list[np.ndarray]
    test: list[np.ndarray]
    parity_valid: list[np.ndarray]
    parity_test: list[np.ndarray]


def run_race(dataset: str, depth: int, instances: int, extra: Sequence[str] = ()) -> Race:
    """Train every instance's race of ``dataset`` (see the module docstring)."""
    cfg = compose_config(["layout=opt", f"dataset={dataset}", f"depth.layers={depth}", f"instances={instances}",
                          "progress=false", *extra])
    plan = plan_job(cfg)
    data, spec, seeds = plan.data, plan.spec, list(plan.seeds)
    if data.valid is None or not len(data.valid):
        raise ConfigError("dataset.validation_fraction", "the race needs a validation split")
    built = build_optimizers(plan.cfg, spec.d, spec.m, seeds, job_dependence(plan.cfg, data))
    optimizers = [o for o in built if isinstance(o, Halving)]
    if len(optimizers) != len(built):
        raise ConfigError("search", "bench margins replays search=halving's race")
    asked = [(i, trial) for i, optimizer in enumerate(optimizers) for trial in optimizer.ask()]
    if not all(trial.final for _, trial in asked):
        raise ConfigError("search.rungs", "bench margins replays the race of the final rung: set search.rungs=[]")
    settings = SearchSettings(spec, int(plan.cfg.dataset.batch_size), plan.cfg.train,
                              Evaluation.from_config(plan.cfg.search.get("evaluation")), False, seeds)
    flow, scores, rows, _, pruned = train_finals(asked, optimizers, data, settings)
    recipe = Recipe.from_config(plan.cfg.train)
    test = row_bpd(flow, data.test, data.log_det, threads=recipe.threads, kernel=recipe.kernel).numpy()
    assert rows is not None  # the race scores on the validation split
    for j, (i, trial) in enumerate(asked):  # told as the runner tells them
        tell_scores(trial, scores[j], rows[j], (i, trial.number) in pruned)
    parity = CouplingFlows(spec, [parity_structure(spec.d, spec.m, spec.depth)] * len(seeds),
                           [torch_generator(s) for s in seeds])
    train(parity, data.train, settings.batch_size, recipe, [torch_generator(s) for s in seeds], data.log_det,
          valid=data.valid)
    parity_valid, parity_test = (row_bpd(parity, rows_, data.log_det, threads=recipe.threads, kernel=recipe.kernel).numpy()
                                 for rows_ in (data.valid, data.test))
    mine = [[j for j, (i, _) in enumerate(asked) if i == k] for k in range(len(optimizers))]
    return Race(optimizers, [[asked[j][1] for j in js] for js in mine], [rows[js, 0].numpy() for js in mine],
                [test[js] for js in mine], list(parity_valid), list(parity_test))


def winner(optimizer: Halving, trials: list[Trial], margin: float) -> int:
    """The position in ``trials`` of the trial ``optimizer`` accepts at ``margin`` (the trials are
    its last asked ones, told but not yet recorded)."""
    saved, optimizer.margin = optimizer.margin, margin
    try:
        chosen = optimizer.select([t for t in trials if t.state is TrialState.COMPLETE])
    finally:
        optimizer.margin = saved
    return trials.index(chosen) if chosen is not None else 0


def _half_winner(optimizer: Halving, trials: list[Trial], valid: np.ndarray, half: np.ndarray, margin: float) -> int:
    """:func:`winner` with every trial's value and rows read from the validation rows ``half`` only,
    at the margin the whole split gets (``search.small_split_rows`` counts its rows, not the half's)."""
    whole = optimizer.small_split_margin if valid.shape[1] < optimizer.small_split_rows else margin
    saved = [(t.value, t.rows) for t in trials]
    small, optimizer.small_split_rows = optimizer.small_split_rows, 0
    try:
        for t, rows in zip(trials, valid):
            if t.rows is not None:
                t.rows = rows[half]
                t.value = float(rows[half].mean())
        return winner(optimizer, trials, whole)
    finally:
        optimizer.small_split_rows = small
        for t, (value, rows) in zip(trials, saved):
            t.value, t.rows = value, rows


def _paired(diff: np.ndarray) -> str:
    se = diff.std(ddof=1) / math.sqrt(len(diff)) if len(diff) > 1 else 0.0
    return f"{diff.mean():+.4f} ± {se:.4f}" + (f" (z {diff.mean() / se:+.1f})" if se > 0 else "")


def margin_table(race: Race, margins: Sequence[float] = MARGINS, seed: int = 0) -> pd.DataFrame:
    """One row per margin of ``race`` (see the module docstring)."""
    rows = []
    starts, halves = [], []  # per instance: the start's position, and the validation rows' halves A and B
    for k, (optimizer, trials) in enumerate(zip(race.optimizers, race.trials)):
        assert optimizer.dependence is not None  # halving reads it
        start_structure = optimizer.dependence.structure(optimizer.m, optimizer.depth, optimizer.seed)
        starts.append(next(j for j, t in enumerate(trials) if t.structure == start_structure))
        half = np.random.default_rng(seed + k).permutation(race.valid[k].shape[1])
        halves.append((half[: len(half) // 2], half[len(half) // 2:]))
    for margin in margins:
        kinds, val_b, val_b_parity, test_start, test_parity, test_bpd = [0, 0, 0], [], [], [], [], []
        for k, (optimizer, trials) in enumerate(zip(race.optimizers, race.trials)):
            start, (a, b) = starts[k], halves[k]
            parity = parity_structure(optimizer.d, optimizer.m, optimizer.depth)
            chosen = winner(optimizer, trials, margin)
            kinds[0 if chosen == start else 1 if trials[chosen].structure == parity else 2] += 1
            valid, test = race.valid[k], race.test[k]
            on_a = _half_winner(optimizer, trials, valid, a, margin)
            val_b.append(valid[on_a, b].mean() - valid[start, b].mean())
            val_b_parity.append(valid[on_a, b].mean() - race.parity_valid[k][b].mean())
            test_start.append(test[chosen].mean() - test[start].mean())
            test_parity.append(test[chosen].mean() - race.parity_test[k].mean())
            test_bpd.append(test[chosen].mean())
        rows.append({"margin": margin, "winner: start / parity / other": "/".join(map(str, kinds)),
                     "validation B − start (rule on A)": _paired(np.array(val_b)),
                     "validation B − layout=parity": _paired(np.array(val_b_parity)),
                     "test − start": _paired(np.array(test_start)),
                     "test − layout=parity": _paired(np.array(test_parity)),
                     "test bpd": f"{np.mean(test_bpd):.4f}"})
    return pd.DataFrame(rows)
