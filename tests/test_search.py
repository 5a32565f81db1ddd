"""Structure search: the optimizer contract, Algorithm 1's rules, batching, and a planted structure."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from flowsweep.config import ConfigError, register_schema
from flowsweep.data import Dataset
from flowsweep.model import CouplingFlows, ModelSpec
from flowsweep.run import build_optimizers
from flowsweep.search import Evolutionary, EvolutionaryLambda, StructureOptimizer, TrialState, modify
from flowsweep.search.runner import SearchSettings, run_searches
from flowsweep.seeding import torch_generator
from flowsweep.structure import Structure, parity_structure
from flowsweep.training import Recipe, evaluate_bpd, train

REPO = Path(__file__).resolve().parents[1]
SEARCHES = sorted(p.stem for p in (REPO / "conf" / "search").glob("*.yaml"))


def job_config(*overrides: str):
    register_schema()
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("config", list(overrides))


def build(name: str, d: int = 6, m: int = 3, depth: int = 4, seed: int = 0, **overrides) -> StructureOptimizer:
    """The optimizer as a job builds it from ``conf/search/<name>.yaml`` (one instance)."""
    cfg = job_config(f"search={name}", f"depth.layers={depth}", *(f"search.{k}={v}" for k, v in overrides.items()))
    return build_optimizers(cfg, d, m, [seed])[0]


def toy_value(structure: Structure) -> float:
    """A deterministic objective: prefers low indices conditioning early layers."""
    return float(sum((l + 1) * sum(layer) for l, layer in enumerate(structure.conditioning)))


def drive(opt: StructureOptimizer, value=toy_value, diverge_every: int = 0) -> None:
    while trials := opt.ask():
        for trial in trials:
            if diverge_every and trial.number % diverge_every == diverge_every - 1:
                trial.value, trial.state = math.inf, TrialState.DIVERGED
            else:
                trial.value, trial.state = value(trial.structure), TrialState.COMPLETE
        opt.tell(trials)


# -- the contract every optimizer in conf/search/ passes ---------------------------------


@pytest.mark.parametrize("name", SEARCHES)
class TestOptimizerContract:
    def test_spends_its_budget_and_keeps_every_trial(self, name):
        opt = build(name, iterations=12)
        drive(opt, diverge_every=5)
        assert len(opt.history) == 13  # the initial structure + T trials
        assert [t.number for t in opt.history] == list(range(13))
        assert opt.ask() == [] and opt.done

    def test_best_is_the_minimum_of_complete_trials_and_never_worsens(self, name):
        opt = build(name, iterations=15)
        drive(opt, diverge_every=4)
        complete = [t for t in opt.history if t.state is TrialState.COMPLETE]
        assert opt.best.value == min(t.value for t in complete)
        assert all(b2 <= b1 for b1, b2 in zip(opt.best_trace, opt.best_trace[1:]))

    def test_diverged_trials_are_recorded_never_accepted(self, name):
        opt = build(name, iterations=10)
        drive(opt, value=lambda s: 0.0, diverge_every=2)
        diverged = [t for t in opt.history if t.state is TrialState.DIVERGED]
        assert diverged and not any(t.accepted for t in diverged)

    def test_structures_are_valid(self, name):
        opt = build(name, d=7, m=2, depth=3, iterations=8)
        drive(opt)
        for trial in opt.history:
            assert trial.structure.depth == 3
            assert all(len(layer) == 2 for layer in trial.structure.conditioning)

    def test_same_seed_same_trials(self, name):
        runs = []
        for _ in range(2):
            opt = build(name, iterations=6, seed=3)
            drive(opt)
            runs.append([t.structure for t in opt.history])
        assert runs[0] == runs[1]
        other = build(name, iterations=6, seed=4)
        drive(other)
        assert [t.structure for t in other.history] != runs[0]

    def test_ask_twice_without_tell_is_refused(self, name):
        opt = build(name)
        opt.ask()
        with pytest.raises(RuntimeError):
            opt.ask()

    def test_bad_settings_name_the_key(self, name):
        with pytest.raises(ConfigError, match="search.iterations"):
            build(name, iterations=-1)
        with pytest.raises(ConfigError, match="search.evaluation.steps"):
            build(name, steps_per_trial=0)


# -- Algorithm 1 ---------------------------------------------------------------------------


def test_modify_keeps_m_and_changes_at_most_k_layers():
    rng = np.random.default_rng(0)
    base = parity_structure(10, 5, 8)
    for _ in range(200):
        child = modify(base, rng)
        assert all(len(layer) == 5 for layer in child.conditioning)
        assert len(child.changed_layers(base)) <= 8


def test_number_of_reshuffled_layers_follows_geometric_half():
    # Count the layers modify() chose by marking them: a layer reshuffled to itself is
    # still chosen, so observe the choice through a structure where any reshuffle of
    # the chosen layers is visible with high probability (d = 40, m = 20).
    rng = np.random.default_rng(1)
    depth, n = 8, 4000
    base = Structure(40, 20, tuple(tuple(range(20)) for _ in range(depth)))
    counts = np.bincount([len(modify(base, rng).changed_layers(base)) for _ in range(n)], minlength=depth + 1)
    expected = np.array([0] + [0.5**k for k in range(1, depth)] + [0.5 ** (depth - 1)]) * n
    for k in (1, 2, 3, 4):
        assert abs(counts[k] - expected[k]) < 4 * math.sqrt(expected[k]), (k, counts, expected)
    assert counts[0] == 0


def test_ties_are_accepted_and_worse_rejected():
    opt = Evolutionary(d=6, m=3, depth=2, seed=0, iterations=3)
    values = iter([1.0, 1.0, 2.0, 0.5])
    drive(opt, value=lambda s: next(values))
    assert [t.accepted for t in opt.history] == [True, True, False, True]
    assert opt.best.number == 3 and opt.best_trace == [1.0, 1.0, 1.0, 0.5]


def test_offspring_descend_from_the_best_so_far():
    opt = Evolutionary(d=6, m=3, depth=3, seed=0, iterations=20)
    drive(opt)
    best = opt.history[0]
    for trial in opt.history[1:]:
        assert trial.parent == best.number
        if trial.accepted:
            best = trial


def test_patience_stops_a_stalled_search():
    opt = Evolutionary(d=6, m=3, depth=2, seed=0, iterations=100, patience=5)
    drive(opt, value=lambda s: 1.0 if opt.history else 0.0)  # nothing beats the first
    assert len(opt.history) == 6


def test_lambda_matched_budget_equals_one_plus_one_trials():
    opt = EvolutionaryLambda(d=6, m=3, depth=2, seed=0, iterations=10, offspring=4)
    drive(opt)
    assert len(opt.history) == 11
    assert [sum(t.iteration == g for t in opt.history) for g in range(4)] == [1, 4, 4, 2]
    with pytest.raises(ConfigError, match="search.offspring"):
        EvolutionaryLambda(d=6, m=3, depth=2, seed=0, offspring=0)


# -- batched evaluation -------------------------------------------------------------------


PAIRS = [(0, 2), (4, 6), (1, 3), (5, 7)]


def planted_pairs(n: int, seed: int) -> torch.Tensor:
    """d = 8 features in dependent pairs (0,2), (4,6), (1,3), (5,7): equal parity, so
    parity masks never let one member of a pair condition the other."""
    g = torch.Generator().manual_seed(seed)
    x = torch.empty(n, 8)
    for i, j in PAIRS:
        x[:, i] = torch.randn(n, generator=g)
        x[:, j] = torch.tanh(2.0 * x[:, i]) + 0.05 * torch.randn(n, generator=g)
    return x


@pytest.fixture(scope="module")
def planted() -> Dataset:
    return Dataset("planted", tuple(f"x{i}" for i in range(8)), planted_pairs(3000, 0), planted_pairs(1000, 1), 0.0)


TRAIN = OmegaConf.create({"steps": 300, "momentum": 0.9, "base_lr": 1e-4, "max_lr": 1e-2, "step_size_up": 30,
                          "mode": "triangular"})


def searches(seeds, iterations=20, steps=30):
    return [Evolutionary(d=8, m=4, depth=2, seed=s, iterations=iterations, steps_per_trial=steps) for s in seeds]


def test_batched_searches_equal_searches_run_alone(planted):
    settings = SearchSettings(spec=ModelSpec(8, 4, 2), batch_size=64, train=TRAIN, progress=False)
    together = searches([10, 11, 12], iterations=6, steps=10)
    run_searches(together, planted, settings)
    for opt in together:
        alone = searches([opt.seed], iterations=6, steps=10)
        run_searches(alone, planted, settings)
        assert [t.structure for t in alone[0].history] == [t.structure for t in opt.history]
        np.testing.assert_allclose([t.value for t in alone[0].history], [t.value for t in opt.history], rtol=1e-5)


def test_evolutionary_search_beats_parity_on_planted_pairs(planted):
    opts = searches([0, 1, 2, 3])
    run_searches(opts, planted, SearchSettings(spec=ModelSpec(8, 4, 2), batch_size=128, train=TRAIN, progress=False))

    def final_test_bpd(structures):
        gens = [torch_generator(100 + i) for i in range(len(structures))]
        flow = CouplingFlows(ModelSpec(8, 4, 2), structures, gens)
        train(flow, planted.train, 128, Recipe.from_config(TRAIN), gens)
        return evaluate_bpd(flow, planted.test).median().item()  # robust to one unlucky final run

    splits = [sum(any((i in layer) != (j in layer) for layer in o.best.structure.conditioning) for i, j in PAIRS)
              for o in opts]
    assert sum(splits) >= 14, splits  # nearly every planted pair found by nearly every search
    searched = final_test_bpd([o.best.structure for o in opts])
    parity = final_test_bpd([parity_structure(8, 4, 2)] * 4)
    assert searched < parity - 0.3, (searched, parity)


@dataclass
class FirstLayerOnly(StructureOptimizer):
    """An optimizer defined only here: mutates layer 0 alone (tests the plug-in path)."""

    def propose(self) -> list[Structure]:
        s = self.best.structure
        return [Structure(s.d, s.m, (tuple(self.rng.choice(s.d, s.m, replace=False)),) + s.conditioning[1:])]


def test_a_new_optimizer_is_one_class_plus_one_yaml(tmp_path, planted):
    (tmp_path / "search").mkdir()
    (tmp_path / "search" / "first_layer.yaml").write_text(
        "_target_: tests.test_search.FirstLayerOnly\nname: first_layer\niterations: 4\nsteps_per_trial: 3\n"
    )
    cfg = job_config("search=first_layer", "depth.layers=3", f"hydra.searchpath=[file://{tmp_path}]")
    opts = build_optimizers(cfg, 8, 4, [0, 1])
    assert all(type(o).__name__ == "FirstLayerOnly" for o in opts)
    run_searches(opts, planted, SearchSettings(spec=ModelSpec(8, 4, 3), batch_size=32, train=TRAIN, progress=False))
    for opt in opts:
        assert len(opt.history) == 5
        assert all(t.structure.conditioning[1:] == opt.history[0].structure.conditioning[1:] for t in opt.history)
