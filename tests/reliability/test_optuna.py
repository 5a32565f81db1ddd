"""The Hydra Optuna sweeper, the real plugin, on the presets ``hparams_search=sgd_optuna`` and ``optuna``.

Every trial is one job; the study minimises what the job returns, the mean validation bpd
of its instances, never a test number. The study lives in ``./optuna.db``: a sweep
interrupted mid-way (SIGINT to its process group) and launched again continues the same
study, its finished trials kept.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import optuna
import pytest
import sqlalchemy.exc
import yaml

from .conftest import Flowsweep, all_runs, tiny
from .servers import optuna_dashboard

STUDY = "flowsweep.yeast.parity.L2.sgd"  # study_name of the preset: experiment, dataset, layout, depth
# The preset's study, seeded, its learning rates kept below where yeast's instances can all diverge.
ARGS = ["hparams_search=sgd_optuna", *tiny("train.steps=1500"), "hydra.sweeper.sampler.n_startup_trials=2",
        "hydra.sweeper.sampler.seed=3", "train.max_lr=tag(log, interval(1e-4, 3e-3))"]
_ENDED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL)


def _study(app: Flowsweep, name: str = STUDY) -> optuna.Study:
    storage = optuna.storages.RDBStorage(f"sqlite:///{app.cwd / 'optuna.db'}",
                                         engine_kwargs={"isolation_level": "AUTOCOMMIT"})  # as the preset opens it
    return optuna.load_study(study_name=name, storage=storage)


def _ended(app: Flowsweep) -> list[optuna.trial.FrozenTrial]:
    """The study's trials that ran to the end (a trial whose every instance diverged FAILs)."""
    # Opened only once the sweeper has set up the storage (it logs the study's name then):
    # two processes creating the same sqlite schema at once collide.
    if "Study name:" not in (app.cwd / "first.log").read_text():
        return []
    try:
        return [t for t in _study(app).trials if t.state in _ENDED]
    except sqlalchemy.exc.OperationalError:  # the sweeper holds sqlite's write lock: look again at the next poll
        return []


def _interrupt_after_one_trial(app: Flowsweep, timeout_s: float = 180) -> int:
    log = open(app.cwd / "first.log", "w")
    process = subprocess.Popen(app.command(*ARGS, "hydra.sweeper.n_trials=4", "hydra.sweep.dir=first"), cwd=app.cwd,
                               env=app.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + timeout_s
        while not _ended(app):
            assert process.poll() is None and time.monotonic() < deadline, (app.cwd / "first.log").read_text()
            time.sleep(0.2)
        os.killpg(process.pid, signal.SIGINT)
        return process.wait(60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)


def test_optuna_minimises_the_validation_bpd_and_an_interrupted_study_resumes(flowsweep_with_store):
    app = flowsweep_with_store
    assert _interrupt_after_one_trial(app) == 130
    before = _ended(app)
    assert 1 <= len(before) < 4

    done = app(*ARGS, "hydra.sweeper.n_trials=2", "hydra.sweep.dir=second")
    assert done.returncode == 0, done.stderr
    assert f"Using an existing study with name '{STUDY}'" in done.stdout + done.stderr
    after = _ended(app)
    assert len(after) == len(before) + 2
    assert [(t.number, t.params, t.value) for t in after[:len(before)]] == [(t.number, t.params, t.value) for t in before]
    after = [t for t in after if t.state == optuna.trial.TrialState.COMPLETE]
    assert after

    # Each trial's value is its job's mean validation bpd, as MLflow holds it, never the test bpd.
    jobs = [r for r in all_runs(app.default_uri) if r.data.tags["flowsweep.role"] == "job" and r.info.status == "FINISHED"]
    by_lr = {float(r.data.params["train.max_lr"]): r.data.metrics for r in jobs}
    for trial in after:
        metrics = by_lr[trial.params["train.max_lr"]]
        assert trial.value == pytest.approx(metrics["val_bpd_mean"], rel=1e-12)
        assert trial.value != pytest.approx(metrics["test_bpd_mean"], rel=1e-6)
    assert {float(r.data.params["train.momentum"]) for r in jobs} >= {t.params["train.momentum"] for t in after}
    # Trial and runs point at each other, across both launches (the second's trial numbers go on
    # from the first's, its Hydra job numbers start at 0 again).
    trials = {t.number: t for t in _study(app).trials if t.state in _ENDED}
    for run in (r for r in all_runs(app.default_uri) if r.info.status == "FINISHED"):
        trial = trials[int(run.data.tags["optuna.trial"])]
        assert run.data.tags["optuna.study"] == STUDY and run.data.tags["flowsweep.sweeper"] == "optuna"
        assert float(run.data.params["train.max_lr"]) == trial.params["train.max_lr"]
        if run.data.tags["flowsweep.role"] == "job":
            assert trial.user_attrs["mlflow_run_name"] == run.info.run_name
    assert max(trials) >= len(before) + 1
    # The second sweep's best is the study's best, with its trials' params.
    result = yaml.safe_load((app.cwd / "second" / "optimization_results.yaml").read_text())
    best = min(after, key=lambda t: t.value)
    assert result["best_value"] == pytest.approx(best.value) and result["best_params"] == best.params


def test_the_default_preset_tunes_the_defaults_adam_recipe(flowsweep_with_store):
    app = flowsweep_with_store
    done = app("hparams_search=optuna", *tiny("train.steps=20"), "hydra.sweeper.n_trials=2",
               "hydra.sweeper.sampler.seed=0", "hydra.sweep.dir=adam")
    assert done.returncode == 0, done.stderr
    assert "Storage: sqlite:///optuna.db\n" in done.stdout + done.stderr  # the path, not an object's repr
    table = (app.cwd / "adam" / "summary.txt").read_text()
    drawn = re.findall(r"train\.max_lr=(\S+)", table)
    assert len(drawn) == 2 and all(value == f"{float(value):.4g}" for value in drawn)  # 4 significant digits
    assert len([line for line in table.splitlines() if line.split()[1:2] == ["*"]]) == 1  # the best trial
    trials = _study(app, "flowsweep.yeast.parity.L2.adam").trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    jobs = [r for r in all_runs(app.default_uri) if r.data.tags["flowsweep.role"] == "job"]
    tuned = {(float(r.data.params["train.max_lr"]), float(r.data.params["train.weight_decay"])) for r in jobs}
    assert tuned == {(t.params["train.max_lr"], t.params["train.weight_decay"]) for t in trials}
    assert {r.data.params["train.optimizer"] for r in jobs} == {"adam"}

    # optuna-dashboard 0.14.0 (the release that runs beside optuna 2.10, docs/sweeps.md) serves the
    # study: its trials, their params, the best one, and each trial's link to its MLflow run.
    with optuna_dashboard("sqlite:///optuna.db", app.cwd) as url:
        with urllib.request.urlopen(f"{url}/api/studies", timeout=30) as response:
            studies = json.load(response)["study_summaries"]
        assert [s["study_name"] for s in studies] == ["flowsweep.yeast.parity.L2.adam"]
        with urllib.request.urlopen(f"{url}/api/studies/{studies[0]['study_id']}", timeout=30) as response:
            shown = json.load(response)
    assert sorted(t["number"] for t in shown["trials"]) == [0, 1]
    assert [t["number"] for t in shown["best_trials"]] == [min(trials, key=lambda t: t.value).number]
    names = {r.info.run_name for r in jobs}
    for trial in shown["trials"]:
        assert {p["name"] for p in trial["params"]} == {"train.max_lr", "train.weight_decay"}
        assert {a["key"]: a["value"] for a in trial["user_attrs"]}["mlflow_run_name"] in names

    # A grid job of the same cell beside the study: the analysis keeps the study's trials out of
    # its cell unless asked, and says so.
    assert app(*tiny("train.steps=20")).returncode == 0

    def cell(*args: str) -> tuple[int, str]:
        out = subprocess.run([sys.executable, "-m", "multirun_analysis", "--tracking-uri", app.default_uri,
                              "--no-figures", *args], cwd=app.cwd, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return int(re.search(r"n = (\d+) instances", out.stdout).group(1)), out.stderr

    n, said = cell()
    assert n == 2 and "left out Optuna study flowsweep.yeast.parity.L2.adam (4 runs, sweep adam)" in said
    assert "--pool-studies" in said
    assert cell("--pool-studies")[0] == 6 and cell("--sweep", "adam")[0] == 4


def test_a_plain_storage_url_is_one_line_naming_the_form_that_works(flowsweep):
    done = flowsweep("hparams_search=optuna", *tiny(), "hydra.sweeper.storage=sqlite:///my.db")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "flowsweep: error: hydra.sweeper.storage: give the study's database as "
        "hydra.sweeper.storage.url=sqlite:///my.db (the preset's storage keeps the autocommit engine optuna 2.10 needs)")
    assert not (flowsweep.cwd / "my.db").exists() and not (flowsweep.cwd / "mlflow.db").exists()


def test_a_study_whose_every_trial_diverges_ends_in_one_line_and_the_report(flowsweep_with_store):
    app = flowsweep_with_store
    done = app("hparams_search=sgd_optuna", *tiny("train.steps=50", "train.patience=null"), "hydra.sweeper.n_trials=2",
               "train.max_lr=tag(log, interval(8, 10))", "train.step_size_up=choice(2)", "hydra.sweep.dir=lost")
    assert done.returncode == 1
    # optuna's "Record does not exist." traceback (the sweeper asks for a best trial) is one line
    assert "Traceback" not in done.stderr and "Record does not exist" not in done.stderr, done.stderr
    assert done.stderr.count("flowsweep: error: hydra.sweeper: the Optuna study has no completed trial") == 1
    assert "flowsweep: 2 of 2 jobs failed (sweep lost):" in done.stderr
    assert {r.info.status for r in all_runs(app.default_uri)} == {"FAILED"}


def test_any_other_traceback_passes_through_whole():
    import io

    from flowsweep.app.joblines import _Dropping

    stream = io.StringIO()
    dropping = _Dropping(stream)
    text = ["Traceback (most recent call last):\n", '  File "x.py", line 1, in <module>\n', "    f()\n",
            "ValueError: something else\n", "after\n"]
    for piece in text:
        dropping.write(piece)
    assert stream.getvalue() == "".join(text)
    dropping.write("Traceback (most recent call last):\n")
    dropping.write('  File "y.py", line 2, in g\n')
    dropping.close_traceback()  # cut off: what was held comes out
    assert stream.getvalue().endswith('Traceback (most recent call last):\n  File "y.py", line 2, in g\n')
