"""The default search ranks structures where they converge: its last rung is the final
training, its trials stop early on validation, and its field holds whole-layer moves."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from flowsweep.config.compose import compose_config
from flowsweep.data import Dataset
from flowsweep.data.datasets import preprocessed
from flowsweep.model import CouplingFlows, ModelSpec
from flowsweep.search import Evaluation, Evolutionary, Halving, Proposal, TrialState
from flowsweep.structure.moves import whole_layer_changes
from flowsweep.search.runner import SearchSettings, run_searches
from flowsweep.structure import Structure
from flowsweep.training import Recipe, train
from flowsweep.seeding import derive_seed, torch_generator

#: Two structures of the scale table below (its dependence structure, and the same with its
#: first layer's sides flipped): after 50 + 250 steps of the trials' recipe the flipped one is
#: ahead, trained to the end the dependence structure wins (measured: docs/structure-search.md).
START = Structure(12, 6, ((0, 2, 4, 5, 6, 11), (0, 1, 2, 3, 5, 9), (0, 2, 4, 5, 6, 11), (1, 3, 7, 8, 9, 10)))
FLIPPED = Structure(12, 6, ((1, 3, 7, 8, 9, 10), (0, 1, 2, 3, 5, 9), (0, 2, 4, 5, 6, 11), (1, 3, 7, 8, 9, 10)))


def scale_table(n: int, seed: int) -> torch.Tensor:
    """12 features: three children whose scale is a non-monotone function of their parent
    (``exp(1.5 cos 2p) N``), three bimodal children (the mode's sign drawn by the parent), at
    fixed shuffled indices."""
    rng = np.random.default_rng(seed)
    columns = []
    for _ in range(3):
        p = rng.standard_normal(n)
        columns += [p, np.exp(1.5 * np.cos(2.0 * p)) * rng.standard_normal(n)]
    for _ in range(3):
        p = rng.standard_normal(n)
        sign = np.where(rng.random(n) < 1 / (1 + np.exp(-3 * p)), 1.0, -1.0)
        columns += [p, 2.0 * sign * np.abs(p) ** 0.5 + 0.3 * rng.standard_normal(n)]
    order = np.random.default_rng(123).permutation(12)
    return torch.tensor(np.stack(columns, 1)[:, order], dtype=torch.float32)


@dataclass
class Field(Halving):
    """The default search with its field cut to ``structures``."""

    structures: tuple[Structure, ...] = ()

    def initial(self) -> list[Proposal]:
        if self.iterations == 0:  # the default: the field is the final rung
            return [Proposal(s, None, final=True) for s in self.structures]
        return [Proposal(s, None, steps=int(self.rungs[0])) for s in self.structures]

    def size(self, rung: int) -> int:
        return len(self.structures)


def default_settings(spec: ModelSpec, seeds: list[int], *overrides: str) -> SearchSettings:
    cfg = compose_config(list(overrides))
    return SearchSettings(spec, int(cfg.dataset.batch_size), cfg.train, Evaluation.from_config(cfg.search.evaluation),
                          False, seeds)


def test_the_default_search_picks_the_structure_that_wins_after_full_training():
    data = preprocessed(Dataset("scale", tuple(f"x{i}" for i in range(12)), scale_table(10000, 0),
                                scale_table(1000, 1), 0.0, valid=scale_table(2500, 2)), "standardize")
    cfg = compose_config(["dataset.batch_size=200"])
    settings = default_settings(ModelSpec(12, 6, 4), [0, 1], "dataset.batch_size=200")
    # Short rungs of the trials' recipe (50 + 250 steps) rank the two the wrong way round ...
    short = [Field(d=12, m=6, depth=4, seed=s, candidates=2, finalists=2, keep=[], rungs=[50, 250], final=False,
                   structures=(START, FLIPPED)) for s in (0, 1)]
    run_searches(short, data, settings)
    for opt in short:
        value = {(t.iteration, t.structure): t.value for t in opt.history}
        assert value[1, FLIPPED] < value[1, START] and opt.best.structure == FLIPPED
    # ... the default search ranks them where they converge, and its winner is the final model.
    parity = Structure(12, 6, ((0, 2, 4, 6, 8, 10), (1, 3, 5, 7, 9, 11)) * 2)
    defaults = {k: cfg.search[k] for k in ("cuts", "keep", "references", "margin")}
    assert not cfg.search.rungs and defaults["cuts"][-1][1] == 2
    found = [Field(d=12, m=6, depth=4, seed=s, candidates=3, finalists=3, rungs=[], structures=(FLIPPED, parity, START),
                   **defaults) for s in (0, 1)]
    outcome = run_searches(found, data, settings)
    for opt, final, spent in zip(found, outcome.finals, outcome.model_steps):
        trials = {t.structure: t for t in opt.history}
        assert final is not None and final.structure == START and opt.best is trials[START] and opt.best.final
        assert final.steps == opt.best.model_steps <= cfg.train.steps
        # parity trails at the last cut and is pruned there: those steps paid; it stood first, but the start is clearly better
        assert trials[parity].state is TrialState.PRUNED and trials[parity].model_steps == defaults["cuts"][-1][0]
        assert trials[FLIPPED].state is TrialState.COMPLETE and trials[START].value < trials[FLIPPED].value
        assert spent == sum(t.model_steps for t in opt.history) <= opt.final_budget(cfg.train.steps)


def test_an_overfit_trial_is_scored_at_its_best_validation_step():
    # 150 training rows, Adam at 3e-3 for 600 steps: the validation bpd falls for ~200 steps, then climbs.
    rows = scale_table(150 + 400, 3)
    data = preprocessed(Dataset("small", tuple(f"x{i}" for i in range(12)), rows[:150], rows[150:], 0.0,
                                valid=rows[150:]), "standardize")
    spec, cfg = ModelSpec(12, 6, 4), compose_config([])
    recipe = {"optimizer": "adam", "schedule": "constant", "max_lr": 0.003}
    scored = {}
    for stopping in (False, True):
        opt = Evolutionary(d=12, m=6, depth=4, seed=0, iterations=0)
        evaluation = Evaluation(steps=600, value="validation", early_stopping=stopping, recipe=recipe)
        run_searches([opt], data, SearchSettings(spec, 20, cfg.train, evaluation, False, [0]))
        scored[stopping] = opt.history[0]
    # The same trial trained alone on its stream, evaluated every 50 steps from step 0, never stopped.
    trial = scored[True]
    generator = torch_generator(derive_seed(*Evaluation().stream(0, trial, 0)))
    flow = CouplingFlows(spec, [trial.structure], [generator])
    never = Recipe.from_config(cfg.train, **recipe, steps=600, patience=1000)
    curve = train(flow, data.train, 20, never, [generator], data.log_det, valid=data.valid).val_curve[:, 0].numpy()
    assert 0 < curve.argmin() < len(curve) - 1 and curve[-1] > curve.min() + 0.1  # it overfits
    assert scored[False].value == pytest.approx(curve[-1], rel=1e-4)  # without early stopping: its last step
    assert scored[True].value == pytest.approx(curve.min(), rel=1e-4)  # with it: its best step
    # It stopped train.patience evaluations after its best, and paid only for the steps it trained.
    assert scored[True].model_steps == min(600, (curve.argmin() + cfg.train.patience) * cfg.train.eval_every)
    assert scored[False].model_steps == 600


def test_whole_layer_changes_are_in_the_default_field():
    start = Structure(8, 4, ((0, 1, 2, 3), (4, 5, 6, 7), (0, 2, 4, 6), (1, 3, 5, 7)))
    repeats, flips, orders = whole_layer_changes(start)
    assert repeats[2].conditioning == ((0, 2, 4, 6),) * 4
    assert flips[0].conditioning[0] == (4, 5, 6, 7) and flips[0].conditioning[1:] == start.conditioning[1:]
    assert orders[0].conditioning == start.conditioning[::-1]
    assert orders[1].conditioning == start.conditioning[1:] + start.conditioning[:1]
    assert whole_layer_changes(Structure(7, 3, start.conditioning[:1] and ((0, 1, 2),) * 4))[1] == []  # d != 2m: no flips
    cfg = compose_config([])
    from flowsweep.structure.dependence import Dependence

    weight = np.random.default_rng(0).random((8, 8))
    np.fill_diagonal(weight, 0.0)
    opt = Halving(d=8, m=4, depth=4, seed=0, dependence=Dependence(weight), **{
        k: v for k, v in compose_config([]).search.items() if k in ("candidates", "rungs", "final", "finalists")})
    field = {p.structure for p in opt.initial()}
    begin = Dependence(weight).structure(4, 4, 0)
    moves = [s for kind in whole_layer_changes(begin) for s in kind]
    assert sum(s in field for s in moves) >= 5, "the field holds some of each kind of move"
    assert all(any(s in field for s in kind) for kind in whole_layer_changes(begin))
    assert cfg.search.final and cfg.search.evaluation.early_stopping  # the default's
