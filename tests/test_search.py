"""Structure search: the optimizer contract (every conf/search file), Algorithm 1's rules, the
evaluation, batching, the budget, and planted structure found at the defaults."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir

from flowsweep.config import ConfigError, register_schema
from flowsweep.data import Dataset
from flowsweep.structure.dependence import Dependence
from flowsweep.model import ModelSpec
from flowsweep.search import (Evaluation, Evolutionary, EvolutionaryLambda, Halving, StructureOptimizer, TrialState,
                              modify, swap)
from flowsweep.search.job import build_optimizers
from flowsweep.search.runner import SearchSettings, run_searches
from flowsweep.structure import Structure, parity_structure

REPO = Path(__file__).resolve().parents[1]
SEARCHES = sorted(p.stem for p in (REPO / "conf" / "search").glob("*.yaml"))


def job_config(*overrides: str):
    register_schema()
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("config", list(overrides))


def random_dependence(d: int, seed: int = 0) -> Dependence:
    weight = np.random.default_rng(seed).random((d, d))
    np.fill_diagonal(weight, 0.0)
    return Dependence(weight)


def build(name: str, d: int = 6, m: int = 3, depth: int = 4, seed: int = 0, **overrides) -> StructureOptimizer:
    """The optimizer as a job builds it from ``conf/search/<name>.yaml`` (one instance)."""
    cfg = job_config(f"search={name}", f"depth.layers={depth}", *(f"search.{k}={v}" for k, v in overrides.items()))
    return build_optimizers(cfg, d, m, [seed], random_dependence(d))[0]


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
    def test_runs_to_its_end_and_keeps_every_trial(self, name):
        opt = build(name)
        drive(opt, diverge_every=5)
        assert [t.number for t in opt.history] == list(range(len(opt.history)))
        assert len({t.iteration for t in opt.history}) == opt.last_iteration + 1
        assert opt.ask() == [] and opt.done

    def test_the_best_is_a_complete_trial(self, name):
        opt = build(name)
        drive(opt, diverge_every=4)
        assert opt.best in opt.history and opt.best.state is TrialState.COMPLETE and opt.best.accepted
        assert len(opt.best_trace) == opt.iteration and math.isfinite(opt.best_value)

    def test_diverged_trials_are_recorded_never_accepted(self, name):
        opt = build(name)
        drive(opt, value=lambda s: 0.0, diverge_every=2)
        diverged = [t for t in opt.history if t.state is TrialState.DIVERGED]
        assert diverged and not any(t.accepted for t in diverged)

    def test_structures_are_valid(self, name):
        opt = build(name, d=7, m=2, depth=3)
        drive(opt)
        for trial in opt.history:
            assert trial.structure.depth == 3
            assert all(len(layer) == 2 for layer in trial.structure.conditioning)

    def test_same_seed_same_trials(self, name):
        # Halving's default field at d = 6 is all readings of the dependence, none drawn: give
        # it random candidates so that the seed has something to change.
        draws = {"random_share": 0.25} if name == "halving" else {}
        runs = []
        for _ in range(2):
            opt = build(name, seed=3, **draws)
            drive(opt)
            runs.append([t.structure for t in opt.history])
        assert runs[0] == runs[1]
        other = build(name, seed=4, **draws)
        drive(other)
        assert [t.structure for t in other.history] != runs[0]

    def test_ask_twice_without_tell_is_refused(self, name):
        opt = build(name)
        opt.ask()
        with pytest.raises(RuntimeError):
            opt.ask()

    def test_bad_settings_name_the_key(self, name):
        key = "iterations" if "iterations" in job_config(f"search={name}").search else "candidates"
        with pytest.raises(ConfigError, match=f"search.{key}"):
            build(name, **{key: -1})
        with pytest.raises(ConfigError, match="search.evaluation.steps"):
            build_search_settings(name, "search.evaluation.steps=0")

    def test_the_search_budget_is_the_papers_at_most(self, name):
        # 200 iterations of 50 SGD steps after the initial structure: the paper's budget
        cfg = job_config(f"search={name}")
        evaluation = Evaluation.from_config(cfg.search.evaluation)
        opt = build_optimizers(cfg, 10, 5, [0], random_dependence(10))[0]
        drive(opt)
        # A final trial is a final training (train.steps at most, one model); a search without one
        # trains its best once more. Today's total: 10,050 search + 3,000 final model-steps.
        trials = sum((t.steps or evaluation.steps) * evaluation.replicas for t in opt.history if not t.final)
        finals = sum(t.final for t in opt.history)
        assert trials <= 201 * 50, trials
        # Halving's final rung is cut (successive halving inside it): it spends at most its final_budget.
        final = opt.final_budget(cfg.train.steps) if isinstance(opt, Halving) else max(finals, 1) * cfg.train.steps
        assert trials + final <= 201 * 50 + 3000


def build_search_settings(name: str, *overrides: str) -> Evaluation:
    return Evaluation.from_config(job_config(f"search={name}", *overrides).search.evaluation)


# -- Algorithm 1 and the mutations ----------------------------------------------------------


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


def test_swaps_follow_the_dependence():
    # one strongly dependent pair (1, 4): dependence-drawn swaps move it across the split
    weight = np.full((6, 6), 1e-3)
    weight[1, 4] = weight[4, 1] = 1.0
    np.fill_diagonal(weight, 0.0)
    base = Structure(6, 3, ((0, 1, 2),))
    rng = np.random.default_rng(0)
    moved = [swap(base, rng, weight, 1, explore=0.0).conditioning[0] for _ in range(300)]
    assert np.mean([4 in layer and 1 not in layer for layer in moved]) > 0.9
    uniform = [swap(base, rng, weight, 1, explore=1.0).conditioning[0] for _ in range(300)]
    assert np.mean([4 in layer and 1 not in layer for layer in uniform]) < 0.3


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
    assert all(b2 <= b1 for b1, b2 in zip(opt.best_trace, opt.best_trace[1:]))  # elitist: never worse


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


def test_halving_promotes_the_best_and_keeps_the_start_and_parity():
    opt = Halving(d=8, m=4, depth=2, seed=0, candidates=16, rungs=[10, 20], eta=4, finalists=3,
                  dependence=random_dependence(8))
    kept = []

    def value(structure):  # the kept ones look worst at first: keep must carry them on
        return 100.0 + len(kept) if structure in kept else toy_value(structure)

    first = opt.ask()
    kept += [first[0].structure, parity_structure(8, 4, 2)]
    assert kept[1] in [t.structure for t in first]  # parity is a candidate
    for t in first:
        t.value, t.state = value(t.structure), TrialState.COMPLETE
    opt.tell(first)
    drive(opt, value=value)
    rungs = [[t for t in opt.history if t.iteration == r] for r in range(3)]
    assert [len(r) for r in rungs] == [16, 4, 3] and [r[0].steps for r in rungs] == [10, 20, None]
    assert {kept[0], kept[1]} <= {t.structure for t in rungs[1]} and {kept[0], kept[1]} <= {t.structure for t in rungs[2]}
    for trial in rungs[1]:  # a promoted trial continues its earlier one
        earlier = opt.history[trial.resume]
        assert earlier.structure == trial.structure and earlier.iteration == trial.iteration - 1
    # The last rung is the final training: fresh, trained as the final model, its parent the trial it came from.
    assert all(t.final and t.resume is None and opt.history[t.parent].iteration == 1 for t in rungs[2])
    assert not any(t.final for t in rungs[0] + rungs[1])
    assert opt.best is min(rungs[2], key=lambda t: t.value) and opt.best.structure not in kept
    assert opt.budget == 16 * 10 + 4 * 20
    trial_rungs = Halving(d=8, m=4, depth=2, seed=0, candidates=16, rungs=[10, 20, 40], final=False,
                          dependence=random_dependence(8))
    drive(trial_rungs)  # the last of the rungs holds the finalists, trained as trials
    assert [sum(t.iteration == r for t in trial_rungs.history) for r in range(3)] == [16, 4, 3]
    assert not any(t.final for t in trial_rungs.history) and trial_rungs.budget == 16 * 10 + 4 * 20 + 3 * 40
    with pytest.raises(ConfigError, match="search.finalists"):
        Halving(d=8, m=4, depth=2, seed=0, finalists=1)


def test_the_evaluation_checks_its_keys():
    assert Evaluation.from_config({"steps": 5, "recipe": {"optimizer": "adam"}}).trial_recipe(
        job_config().train).optimizer == "adam"
    with pytest.raises(ConfigError, match=r"search\.evaluation\.value"):
        Evaluation(value="test")
    with pytest.raises(ConfigError, match=r"search\.evaluation\.recipe: unknown key\(s\) \['lr'\]"):
        Evaluation(recipe={"lr": 0.1})
    with pytest.raises(ConfigError, match=r"search\.evaluation: unknown key\(s\) \['step'\]"):
        Evaluation.from_config({"step": 5})


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
    return Dataset("planted", tuple(f"x{i}" for i in range(8)), planted_pairs(3000, 0), planted_pairs(1000, 1), 0.0,
                   valid=planted_pairs(500, 2))


def settings(depth: int, *overrides: str) -> SearchSettings:
    cfg = job_config(*overrides)
    return SearchSettings(ModelSpec(8, 4, depth), 64, cfg.train, Evaluation.from_config(cfg.search.evaluation), False)


@pytest.mark.parametrize("evaluation", ["paper", "predictive"])
def test_batched_searches_equal_searches_run_alone(planted, evaluation):
    setup = settings(2, "search=evolutionary", f"search/evaluation={evaluation}", "search.evaluation.steps=10")
    together = [Evolutionary(d=8, m=4, depth=2, seed=s, iterations=4) for s in (10, 11, 12)]
    run_searches(together, planted, setup)
    for opt in together:
        alone = [Evolutionary(d=8, m=4, depth=2, seed=opt.seed, iterations=4)]
        run_searches(alone, planted, setup)
        assert [t.structure for t in alone[0].history] == [t.structure for t in opt.history]
        np.testing.assert_allclose([t.value for t in alone[0].history], [t.value for t in opt.history], rtol=1e-5)


def test_replicas_paired_seeds_and_the_budget_count(planted):
    setup = settings(2, "search=evolutionary_lambda", "search/evaluation=predictive", "search.evaluation.steps=5",
                     "search.evaluation.seeds=paired")
    opts = [EvolutionaryLambda(d=8, m=4, depth=2, seed=1, iterations=6, offspring=3)]
    outcome = run_searches(opts, planted, setup)
    assert outcome.model_steps == [len(opts[0].history) * 5 * 2]
    # paired: two offspring of one generation with the same structure would score the same
    again = Evaluation.from_config({**setup.evaluation.__dict__})
    trial = opts[0].history[1]
    assert again.stream(7, trial, 0) == again.stream(7, opts[0].history[2], 0)


def test_final_start_best_hands_over_the_trained_parameters(planted):
    setup = settings(2, "search=evolutionary", "search.evaluation.steps=20", "search.evaluation.final_start=best")
    opts = [Evolutionary(d=8, m=4, depth=2, seed=3, iterations=3)]
    outcome = run_searches(opts, planted, setup)
    champion = outcome.champions[0]
    assert champion is not None and champion.structures[0] == opts[0].best.structure
    assert not torch.equal(champion.theta, type(champion)(champion.spec, champion.structures,
                                                          [torch.Generator()]).theta)  # trained, not fresh


@dataclass
class FirstLayerOnly(StructureOptimizer):
    """An optimizer defined only here: mutates layer 0 alone (tests the plug-in path)."""

    def propose(self) -> list[Structure]:
        s = self.best.structure
        return [Structure(s.d, s.m, (tuple(self.rng.choice(s.d, s.m, replace=False)),) + s.conditioning[1:])]


def test_a_new_optimizer_is_one_class_plus_one_yaml(tmp_path, planted):
    (tmp_path / "search").mkdir()
    (tmp_path / "search" / "first_layer.yaml").write_text(
        "defaults:\n  - /search/evaluation@evaluation: paper\n"
        "_target_: tests.test_search.FirstLayerOnly\nname: first_layer\niterations: 4\n"
    )
    cfg = job_config("search=first_layer", "depth.layers=3", "search.evaluation.steps=3",
                     f"hydra.searchpath=[file://{tmp_path}]")
    opts = build_optimizers(cfg, 8, 4, [0, 1])
    assert all(type(o).__name__ == "FirstLayerOnly" for o in opts)
    setup = SearchSettings(ModelSpec(8, 4, 3), 32, cfg.train, Evaluation.from_config(cfg.search.evaluation), False)
    run_searches(opts, planted, setup)
    for opt in opts:
        assert len(opt.history) == 5
        assert all(t.structure.conditioning[1:] == opt.history[0].structure.conditioning[1:] for t in opt.history)


# -- planted structure, found at the default training settings ------------------------------


@pytest.fixture(scope="module")
def planted_uri(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('planted') / 'm.db'}"


@pytest.fixture(scope="module")
def planted_jobs(planted_uri: str) -> dict[str, "pd.DataFrame"]:
    """Parity, oracle and the default search on synthetic_pairs (depth 2, the default training
    settings), its field cut to 8 structures (the final rung: 8 to step 600, 4 to 1500, 2 on)."""
    from flowsweep.app.run import run_job
    from tests.conftest import _search_runs

    uri = planted_uri
    found = {}
    for layout, extra in (("parity", []), ("oracle", []), ("opt", ["search.candidates=8"])):
        cfg = job_config("dataset=synthetic_pairs", "depth.layers=2", "instances=3", f"layout={layout}",
                         "progress=false", f"tracking.uri={uri}", f"tracking.sweep_id={layout}", *extra)
        run_job(cfg)
        found[layout] = _search_runs(uri, experiment_names=["flowsweep"],
                                     filter_string=f"tags.sweep_id = '{layout}' and tags.`flowsweep.role` = 'instance'")
    return found


def test_the_default_search_finds_a_strong_planted_structure(planted_jobs):
    test = {layout: runs["metrics.test_bpd"].mean() for layout, runs in planted_jobs.items()}
    share = (test["parity"] - test["opt"]) / (test["parity"] - test["oracle"])
    assert share >= 0.8, test
    assert (planted_jobs["opt"]["metrics.dependency_recall"] == 1.0).all()
    opt = planted_jobs["opt"]
    # Every model-step counted: the final rung's losers (pruned or not) and the final model's own training.
    assert (opt["metrics.model_steps"] == opt["metrics.search_model_steps"] + opt["metrics.final_model_steps"]).all()
    assert ((opt["metrics.search_model_steps"] > 7 * 50) & (opt["metrics.model_steps"] <= 8 * 600 + 4 * 900 + 2 * 1500)).all()
    fixed = planted_jobs["parity"]
    assert (fixed["metrics.model_steps"] == fixed["metrics.final_model_steps"]).all()
    assert ((0 < fixed["metrics.final_model_steps"]) & (fixed["metrics.final_model_steps"] <= 3000)).all()
    assert (planted_jobs["opt"]["params.search"] == "halving").all()  # the default
    # Its rungs differ in fidelity: each rung's best is logged under its own name, no "best so far".
    assert opt["metrics.search_iteration_best_bpd"].notna().all()
    assert "metrics.search_best_bpd" not in opt or opt["metrics.search_best_bpd"].isna().all()


def test_the_analysis_draws_the_default_searchs_rungs(planted_jobs, planted_uri, tmp_path):
    from multirun_analysis.cli import main

    assert main(["--tracking-uri", planted_uri, "--sweep", "opt", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "search_rungs_synthetic_pairs.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "search_synthetic_pairs.png").exists()  # halving logs no best so far


def test_halving_keeps_a_kept_finalist_unless_a_challenger_is_clearly_better():
    def final_rung(challenger_rows: np.ndarray) -> Halving:
        opt = Halving(d=6, m=3, depth=2, seed=0, candidates=4, rungs=[5], finalists=3, margin=2.0,
                      dependence=random_dependence(6))
        trials = opt.ask()
        for t in trials:
            t.value, t.state = toy_value(t.structure), TrialState.COMPLETE
        opt.tell(trials)
        final = opt.ask()
        kept = [t for t in final if t.structure in opt._kept]
        reference = np.random.default_rng(0).normal(1.0, 0.5, size=200)
        for t in final:
            t.state = TrialState.COMPLETE
            t.rows = reference if t in kept else challenger_rows
            t.value = float(t.rows.mean())
        opt.tell(final)
        return opt

    rows = np.random.default_rng(0).normal(1.0, 0.5, size=200)
    noisy = final_rung(rows + np.random.default_rng(1).normal(0.0, 3.0, size=200) - 0.05)  # lower, but noise
    clear = final_rung(rows - 0.05)  # lower on every row
    assert noisy.best.structure in noisy._kept and clear.best.structure not in clear._kept


@pytest.mark.parametrize("small_split_rows, challenger_wins", [(0, True), (200, True), (201, False)])
def test_a_small_validation_split_asks_a_challenger_for_the_small_split_margin(small_split_rows, challenger_wins):
    # 200 validation rows; the challenger is lower than the start by 1.5 standard errors of the
    # paired difference: enough at margin 1, not at the small split's 2 (below 201 rows, not 200).
    opt = Halving(d=6, m=3, depth=2, seed=0, candidates=3, finalists=3, rungs=[], keep=["dependence"],
                  references=["dependence"], margin=1.0, small_split_rows=small_split_rows, small_split_margin=2.0,
                  dependence=random_dependence(6))
    final = opt.ask()
    start = opt.dependence.structure(opt.m, opt.depth, opt.seed)
    base = np.random.default_rng(0).normal(1.0, 0.5, size=200)
    noise = np.random.default_rng(1).normal(0.0, 1.0, size=200)
    noise = (noise - noise.mean()) / noise.std(ddof=1)  # mean 0, std 1: the gap's se is 1 / sqrt(200)
    for t in final:
        t.rows = base if t.structure == start else base + 0.1 * noise - 1.5 * 0.1 / np.sqrt(200) + 1e-6 * t.number
        t.value, t.state = float(t.rows.mean()), TrialState.COMPLETE
    challenger = min((t for t in final if t.structure != start), key=lambda t: t.value)
    assert opt.margin_for(final) == (2.0 if small_split_rows > 200 else 1.0)
    opt.tell(final)
    assert (opt.best is challenger) == challenger_wins and (opt.best.structure == start) != challenger_wins


@pytest.mark.parametrize("challenger_shift, winner", [(-0.05, "parity"), (-0.5, "challenger")])
def test_the_references_stand_in_turn_and_a_pruned_parity_still_stands(challenger_shift, winner):
    # The default's final rung: parity stands, the start takes its place only if clearly better,
    # then the best finisher only if clearly better than the one standing. Parity is pruned by a
    # cut here, and still stands with its value before the cut.
    opt = Halving(d=6, m=3, depth=2, seed=0, candidates=4, finalists=4, rungs=[], cuts=[[250, 2]], keep=["dependence"],
                  references=["parity", "dependence"], margin=2.0, dependence=random_dependence(6))
    final = opt.ask()
    assert all(t.final for t in final) and len(final) == 4
    parity, start = opt._references
    base = np.random.default_rng(0).normal(1.0, 0.5, size=200)
    shift = {start: 0.2, parity: 0.0}
    for t in final:  # parity beats the start clearly; the challengers beat parity by noise, or clearly
        noise = np.random.default_rng(t.number).normal(0.0, 3.0 if challenger_shift > -0.1 else 0.1, size=200)
        t.rows = base + shift.get(t.structure, challenger_shift) + (0.0 if t.structure in shift else noise)
        t.value = float(t.rows.mean())
        t.state = TrialState.PRUNED if t.structure == parity else TrialState.COMPLETE
    best = min(final, key=lambda t: t.value)
    assert best.structure not in (start, parity)  # the lowest value is a challenger's ...
    opt.tell(final)
    if winner == "parity":
        assert opt.best.structure == parity and opt.best.state is TrialState.PRUNED  # ... but parity stands
    else:
        assert opt.best is best  # ... clearly better than parity: it wins
