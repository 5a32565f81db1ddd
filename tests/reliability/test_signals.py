"""SIGTERM and a killed MLflow writer, with real signals to a real ``main.py``.

SIGTERM (``kill``, a scheduler's time limit) ends the running job's runs KILLED and exits
143 with one line; a writer process killed mid-job leaves no run RUNNING: the job ends
them FAILED itself and exits 1 with one line. Under the submitit launcher, the signal SLURM sends
before a time limit or preemption (SIGUSR2, submitit's default) requeues the task: its runs end
KILLED and the job runs again from the start, as a rerun does.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

from .conftest import all_runs, tiny
from .test_interrupt import _wait_for_a_growing_curve

LONG = [*tiny("train.steps=400000", "train.patience=null"), "tracking.progress_interval_s=0.5"]


def _writer_of(pid: int) -> int:
    children = subprocess.run(["pgrep", "-P", str(pid), "-f", "flowsweep.record.mlflow_writer"],
                              capture_output=True, text=True).stdout.split()
    assert len(children) == 1, children
    return int(children[0])


def _run_and(app, action) -> tuple[int, str]:
    log = app.cwd / "job.log"
    process = app.popen(*LONG, log=log)
    try:
        _wait_for_a_growing_curve(process, app.default_uri)
        action(process)
        code = process.wait(60)
    finally:
        if process.poll() is None:
            process.kill()
    return code, log.read_text()


def test_sigterm_ends_the_runs_killed_and_exits_143(flowsweep_with_store):
    app = flowsweep_with_store
    code, output = _run_and(app, lambda p: os.kill(p.pid, signal.SIGTERM))
    assert code == 143, output
    assert "flowsweep: terminated (SIGTERM); the running job's MLflow runs ended KILLED" in output
    assert "Traceback" not in output
    runs = all_runs(app.default_uri)
    assert len(runs) == 3 and {r.info.status for r in runs} == {"KILLED"}


def test_a_killed_writer_leaves_no_run_running(flowsweep_with_store):
    app = flowsweep_with_store
    code, output = _run_and(app, lambda p: (os.kill(_writer_of(p.pid), signal.SIGKILL), time.sleep(0.1)))
    assert code == 1, output
    assert "Traceback" not in output, output
    assert output.count("flowsweep: error:") == 1 and "MLflow writer process" in output, output
    runs = all_runs(app.default_uri)
    assert len(runs) == 3 and {r.info.status for r in runs} == {"FAILED"}


def _submitit_task(sweep_dir) -> int:
    """The submitit task of the sweep in ``sweep_dir`` (its command line names its folder), no other's."""
    pattern = f"submitit.core._submit {sweep_dir}"
    tasks = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
    assert len(tasks) == 1, tasks
    return int(tasks[0])


def test_a_submitit_task_signalled_to_requeue_runs_again_and_finishes(flowsweep_with_store):
    app = flowsweep_with_store
    log = app.cwd / "job.log"
    process = app.popen("-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10",
                        *tiny("train.steps=20000", "train.patience=null"), "tracking.progress_interval_s=0.5",
                        "hydra.sweep.dir=multirun", log=log)
    try:
        _wait_for_a_growing_curve(process, app.default_uri)
        os.kill(_submitit_task(app.cwd / "multirun" / ".submitit"), signal.SIGUSR2)
        code = process.wait(120)
    finally:
        if process.poll() is None:
            process.kill()
    output = log.read_text()
    assert code == 0, output
    assert "Traceback" not in output and "1 of 1 jobs completed" in output, output
    task_log = next((app.cwd / "multirun" / ".submitit").rglob("*_log.err")).read_text()
    assert "Caught signal SIGUSR2" in task_log, task_log
    # The first attempt's three runs (job and two instances) ended KILLED, the requeued one's FINISHED.
    states = sorted(r.info.status for r in all_runs(app.default_uri))
    assert states == ["FINISHED"] * 3 + ["KILLED"] * 3, states
