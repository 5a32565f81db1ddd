"""Smoke runs of the benchmark (tiny settings; no timing is asserted)."""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys
import time

import numpy as np
import pytest

from flowsweep.bench.__main__ import main
from flowsweep.bench.compare import compare
from flowsweep.bench.phases import PHASES, PhaseClock
from flowsweep.bench.workload import make_workload
from flowsweep.config.paths import CONF_DIR

HAS_NFLOWS = importlib.util.find_spec("nflows") is not None


def test_the_three_engines_train_the_same_models(data_dir):
    work = make_workload("magic", depth=2, models=2, data_dir=str(data_dir), threads=1)
    timing, agreement = compare(work, steps=3, repeats=1, nflows=HAS_NFLOWS)
    assert len(timing) == (3 if HAS_NFLOWS else 2)
    assert (timing["ms / model-step"] > 0).all()
    # from the same initial parameters and minibatches, the usual ways reach the engine's bpd
    assert (agreement["max |Δ| minibatch bpd"] < 1e-3).all()
    assert (agreement["max |Δ| final train bpd"] < 1e-4).all()


def test_command_line_prints_both_tables(data_dir, capsys):
    main(["--data-dir", str(data_dir), "--models", "2", "--steps", "2", "--repeats", "1", "--depth", "2", "--no-nflows"])
    out = capsys.readouterr().out
    assert "(a) flowsweep batched engine" in out and "(b) usual way" in out and "speed-up of (a)" in out
    peak = next(line for line in out.splitlines() if "GEMM peak" in line)  # (a)'s share of a matmul's GFLOP/s
    achieved, share = float(peak.split(" GFLOP/s")[0].split()[-1]), float(peak.split(" % of")[0].split()[-1])
    assert achieved > 0 and 0 < share < 100


def test_phase_clock_counts_nested_time_once():
    clock = PhaseClock()
    inner = clock.wrap("figures", lambda: time.sleep(0.05))
    outer = clock.wrap("logging", lambda: (time.sleep(0.02), inner()))
    start = time.perf_counter()
    outer()
    total = time.perf_counter() - start
    assert clock.seconds["figures"] >= 0.05 and 0.02 <= clock.seconds["logging"] < 0.05
    assert sum(clock.seconds.values()) == pytest.approx(total, abs=0.01)


def test_every_phase_target_exists():
    # The job mode times a job by wrapping these functions; a renamed one would silently count as "other".
    for phase, targets in PHASES.items():
        for module_name, path in targets:
            owner = importlib.import_module(module_name)
            for part in path.split("."):
                owner = getattr(owner, part)
            assert callable(owner), (phase, module_name, path)


def test_an_unknown_dataset_is_one_line_and_a_non_zero_exit():
    done = subprocess.run([sys.executable, "-m", "flowsweep.bench", "compare", "--steps", "2", "--dataset", "nope"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    # The line main.py gives, from compose_config's own check, not Hydra's "Could not find 'dataset/nope'".
    options = ", ".join(sorted(p.stem for p in CONF_DIR.glob("dataset/*.yaml")))
    assert done.stderr.strip().splitlines() == [f"flowsweep.bench: error: dataset: no option 'nope' in conf/dataset/; "
                                                f"choose from {options}"]


def test_evaluation_bench_scores_every_probe_against_the_final_models():
    from flowsweep.bench.evaluation import PROBES, evaluation_table

    table = evaluation_table(["synthetic_pairs"], structures=5, depth=2)
    assert list(table["evaluation"]) == [p.label for p in PROBES]
    assert list(table["model-steps per trial"]) == [50, 50, 200, 100, 1200]  # the trials' budgets, replicas counted
    rhos = table[["rho with final test bpd", "rho with itself, other seed"]].to_numpy()
    assert np.isfinite(rhos).all() and (np.abs(rhos) <= 1).all()


def test_a_benchmark_without_its_extra_names_the_pip_install(tmp_path, data_dir):
    """nflows hidden from a fresh interpreter, as where the bench extra is not installed: one line, no traceback."""
    import subprocess
    import sys

    hide = "import sys, runpy; sys.modules['nflows'] = None; sys.argv = ['flowsweep.bench', 'compare', '--steps', '1']; " \
           "runpy.run_module('flowsweep.bench', run_name='__main__')"
    done = subprocess.run([sys.executable, "-c", hide], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**__import__("os").environ, "FLOWSWEEP_DATA_DIR": str(data_dir),
                               "PYTHONPATH": str(__import__("pathlib").Path(__file__).parents[1])})
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
    assert "this benchmark needs nflows" in done.stderr and "pip install 'flowsweep[bench]'" in done.stderr


@pytest.mark.parametrize("argv, message", [
    (["--threads", "0"], "argument --threads: must be >= 1, got 0"),
    (["--threads", "-1"], "argument --threads: must be >= 1, got -1"),
    (["--models", "0"], "argument --models: must be >= 1, got 0"),
    (["--steps", "-1"], "argument --steps: must be >= 1, got -1"),
    (["--depth", "-1"], "argument --depth: must be >= 1, got -1"),
    (["--repeats", "0"], "argument --repeats: must be >= 1, got 0"),
    (["--models", "abc"], "argument --models: must be an integer, got 'abc'"),
    (["evaluation", "--structures", "0"], "argument --structures: must be >= 1, got 0"),
    (["structure", "--instances", "0"], "argument --instances: must be >= 1, got 0"),
    (["best-known", "--rounds", "-1"], "argument --rounds: must be >= 0, got -1"),
    (["spline", "--hidden", "0"], "argument --hidden: must be >= 1, got 0"),
])
def test_a_bad_count_is_argparses_one_line_and_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)  # argparse stops before anything is built or trained
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(f"error: {message}")


@pytest.mark.parametrize("overrides, message", [
    (["train.steps=0"], "flowsweep: error: train.steps: must be >= 1, got 0"),
    (["dataset=foo"], "flowsweep: error: dataset: no option 'foo' in conf/dataset/; choose from csv, magic, "),
    (["--", "-m", "dataset=yeast,foo"], "flowsweep: error: dataset: no option 'foo' in conf/dataset/; choose from "),
])
def test_bench_job_with_bad_input_is_the_jobs_one_line_and_its_exit(overrides, message, tmp_path):
    done = subprocess.run([sys.executable, "-m", "flowsweep.bench", "job", "--keep", str(tmp_path), *overrides],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(message), done.stderr
    assert "Traceback" not in done.stderr


def test_a_cut_replay_loses_a_slow_starter_to_an_early_cut_and_keeps_it_with_later_ones():
    from flowsweep.bench.field import replay_cuts

    # Three structures, evaluated every 100 steps to 1000: parity (0) plateaus at 1.0, the start (1)
    # at 0.8, a slow starter (2) trails until step 500 and converges lowest, at 0.5.
    steps = np.arange(0, 1001, 100)
    parity = np.maximum(2.0 - steps / 200, 1.0)
    start = np.maximum(2.0 - steps / 150, 0.8)
    slow = np.where(steps < 500, 2.5, np.maximum(2.5 - (steps - 400) / 150, 0.5))
    curve = {"best": np.stack([parity, start, slow], 1), "steps": steps, "start": 1, "parity": 0,
             "trained": np.array([1000, 1000, 1000])}
    assert replay_cuts(curve, []) == (1.0, 3000)
    early, spent_early = replay_cuts(curve, [[200, 2]])  # the slow starter is cut: (1.0 - 0.8) / (1.0 - 0.5)
    assert early == pytest.approx(0.4) and spent_early == 1000 + 1000 + 200
    late, spent_late = replay_cuts(curve, [[700, 2]])  # by step 700 it leads: parity is cut instead
    assert late == pytest.approx(1.0) and spent_late == 700 + 1000 + 1000
    # The start stays whatever its value, in the place of the last survivor.
    assert replay_cuts(curve, [[700, 1]]) == (pytest.approx(0.4), 700 + 1000 + 700)


def test_the_margin_replay_picks_what_the_search_picks_and_margins_order_the_winners(data_dir):
    import math

    from flowsweep.app.plan import plan_job
    from flowsweep.bench.margins import margin_table, run_race, winner
    from flowsweep.config.compose import compose_config
    from flowsweep.search.base import TrialState
    from flowsweep.search.job import job_dependence, search_job

    # 300 steps: the first cut (step 150) prunes half of each field, the rest stop early or at the end.
    extra = ["train.steps=300", "train.threads=1", f"data_dir={data_dir}"]
    race = run_race("yeast", 2, 3, extra)
    plan = plan_job(compose_config(["layout=opt", "dataset=yeast", "depth.layers=2", "instances=3",
                                    "progress=false", *extra]))
    searched = search_job(plan.cfg, plan.spec, plan.data, list(plan.seeds), job_dependence(plan.cfg, plan.data))
    margin = float(plan.cfg.search.margin)
    assert [trials[winner(o, trials, margin)].structure for o, trials in zip(race.optimizers, race.trials)] \
        == searched.structures  # the race trained once is the search's race
    for optimizer, trials in zip(race.optimizers, race.trials):
        assert any(t.state is TrialState.PRUNED for t in trials) and optimizer.margin == margin  # left as it was
        complete = [t for t in trials if t.state is TrialState.COMPLETE]
        assert trials[winner(optimizer, trials, 0.0)] == min(complete, key=lambda t: (t.value, t.number))
        kept = trials[winner(optimizer, trials, math.inf)].structure  # no challenger is infinitely better
        assert kept in (optimizer.dependence.structure(optimizer.m, optimizer.depth, optimizer.seed),
                        trials[1].structure)  # the start or parity, the field's first two
    table = margin_table(race, [0.0, margin])
    assert list(table["margin"]) == [0.0, margin]
    assert all(sum(map(int, kinds.split("/"))) == 3 for kinds in table["winner: start / parity / other"])


@pytest.mark.parametrize("margins", [["nan"], ["-1"], ["inf"], ["abc"]])
def test_a_bad_margin_is_argparses_one_line(margins, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["margins", "--margins", *margins])
    assert exit_.value.code == 2 and "--margins" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    ((), "train.patience: early stopping needs a validation split"),  # the job's own check
    (("train.patience=null",), "search.evaluation.value: validation needs a validation split"),
])
def test_margins_on_a_table_without_a_validation_split_is_one_line(extra, message, data_dir):
    done = subprocess.run([sys.executable, "-m", "flowsweep.bench", "margins", "--datasets", "yeast", "--instances", "2",
                           "dataset.validation_fraction=0.0", *extra, f"data_dir={data_dir}"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(f"flowsweep.bench: error: {message}"), done.stderr


@pytest.mark.parametrize("text", ["150:8,150:4", "150:4,600:8", "150", "a:b", "0:2"])
def test_a_bad_cut_schedule_is_argparses_one_line(text, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["field", "--cuts", text])
    assert exit_.value.code == 2 and "--cuts" in capsys.readouterr().err


def test_zuko_baselines_stop_by_the_jobs_rule_and_keep_their_best_parameters(data_dir):
    import torch

    from flowsweep.bench.baselines import _bpd, train_zuko, zuko_flow
    from flowsweep.config.compose import compose_config
    from flowsweep.data import load_dataset, preprocessed
    from flowsweep.seeding import torch_generator

    cfg = compose_config(["dataset=yeast"])
    data = preprocessed(load_dataset(cfg.dataset, str(data_dir)), cfg.model.preprocess)
    torch.manual_seed(0)
    frozen = zuko_flow("nsf", data.d, 1, [8])
    # a learning rate of 0 never improves on the first evaluation: stopped after `patience` more
    still = train_zuko(frozen, data, 29, steps=1000, lr=0.0, min_lr=0.0, eval_every=10, patience=3,
                       generator=torch_generator(1))
    assert still["steps"] == 30 and still["best_step"] == 0
    torch.manual_seed(0)
    model = zuko_flow("maf", data.d, 1, [8])
    run = train_zuko(model, data, 29, steps=60, lr=1e-2, min_lr=1e-5, eval_every=20, patience=None,
                     generator=torch_generator(1))
    assert run["steps"] == 60 and run["best_step"] in (20, 40, 60)
    # the model ends with its best evaluation's parameters, scored in raw units as test_bpd is
    assert _bpd(model, data.valid, data.log_det) == pytest.approx(run["val_bpd"], abs=1e-6)
    assert run["val_bpd"] < still["val_bpd"] and np.isfinite(run["test_bpd"])


def test_the_zuko_command_prints_each_flows_test_bpd_with_its_n(data_dir, capsys):
    main(["zuko", "--data-dir", str(data_dir), "--datasets", "yeast", "--seeds", "2", "--steps", "20",
          "--transforms", "1", "--hidden", "8", "--threads", "1"])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| yeast")]
    assert [row.split("|")[2].strip() for row in rows] == ["zuko NSF (1 transforms, 8)", "zuko MAF (1 transforms, 8)"]
    assert all(row.split("|")[4].strip() == "2" and " ± " in row.split("|")[5] for row in rows)


def test_the_spline_command_times_the_fused_and_reference_splines_and_zuko(data_dir, capsys):
    pytest.importorskip("zuko")
    main(["spline", "--data-dir", str(data_dir), "--models", "2", "--steps", "2", "--depth", "2", "--hidden", "8",
          "--threads", "2"])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| (")]
    assert [row.split(")")[0] for row in rows] == ["| (a", "| (r", "| (z"]
    assert all(float(row.split("|")[3]) > 0 for row in rows)  # ms / model-step
    # zuko timed at 1 and 2 threads; (a) is compared with the faster, the other listed below it
    fastest = int(rows[2].split("at its fastest: ")[1].split(" thread")[0])
    other = [line for line in out.splitlines() if line.startswith("| zuko, model by model, at ")]
    assert fastest in (1, 2) and len(other) == 1 and f"at {3 - fastest} thread(s)" in other[0]
    assert float(other[0].split("|")[3]) >= float(rows[2].split("|")[3])
    assert "over zuko at its fastest thread count" in out and "over the reference spline" in out


@pytest.mark.parametrize("depth, shipped", [(2, False), (4, True)])
def test_structure_bench_leaves_out_the_best_known_row_where_none_is_shipped(depth, shipped):
    from flowsweep.bench.structure import ENTRIES, structure_tables

    # `bench structure --depth 8` stopped at its first dataset: best known structures exist at depth 4 only.
    entries = [e for e in ENTRIES if e.label in ("parity", "best known", "dependence", "default search")]
    tables, shares = structure_tables(["synthetic_pairs"], depth=depth, instances=2, entries=entries,
                                      extra=["train.steps=20"], echo=False)
    labels = list(tables["synthetic_pairs"]["layout / search"])
    assert ("best known" in labels) == shipped and ("best known, at that total" in labels) == shipped
    assert "dependence, at that total" in labels
    share = tables["synthetic_pairs"].set_index("layout / search")["share of best known"]
    assert share.notna().any() == shipped and np.isfinite(tables["synthetic_pairs"]["test bpd"]).all()
