"""Ctrl-C as a terminal sends it: SIGINT to the sweep's whole process group, with SIGINT at
its default disposition in the sweep.

While the first job trains, its runs are RUNNING since the job started and its
``batch_bpd`` curve grows in the store; at the interrupt the whole multirun stops at once:
the job's runs (parent and instances) end KILLED, the next job never starts, and the exit
status is 130.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

from mlflow.tracking import MlflowClient

from .conftest import Flowsweep, all_runs, instance_runs, tiny

#: Job 0 would train for minutes (no early stopping); job 1 must never start.
SWEEP = ["-m", *tiny("train.steps=400000,5", "train.patience=null"), "tracking.progress_interval_s=0.5",
         "hydra.sweep.dir=multirun"]


def _start(app: Flowsweep) -> subprocess.Popen:
    """The sweep in a process group of its own, SIGINT at its default (as a shell's foreground job)."""
    log = open(app.cwd / "sweep.log", "w")
    return subprocess.Popen(app.command(*SWEEP), cwd=app.cwd, env=app.env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _curve_points(client: MlflowClient, uri: str) -> list[int]:
    return [len(client.get_metric_history(r.info.run_id, "batch_bpd")) for r in instance_runs(all_runs(uri))]


def _wait_for_a_growing_curve(process: subprocess.Popen, uri: str, timeout_s: float = 120) -> list[int]:
    client = MlflowClient(uri)
    deadline = time.monotonic() + timeout_s
    seen: list[int] = []
    while time.monotonic() < deadline:
        assert process.poll() is None, (process.args, "ended before it was interrupted")
        points = _curve_points(client, uri)
        if points and min(points) > 0:
            seen.append(min(points))
            if len(seen) > 1 and seen[-1] > seen[0]:
                return seen
        time.sleep(0.3)
    raise AssertionError(f"no growing batch_bpd curve: {seen}")


def test_ctrl_c_stops_the_whole_sweep_at_once_and_ends_its_runs_killed(flowsweep_with_store):
    app, uri = flowsweep_with_store, flowsweep_with_store.default_uri
    started = time.time()
    process = _start(app)
    try:
        _wait_for_a_growing_curve(process, uri)
        running = all_runs(uri)
        assert len(running) == 3 and {r.info.status for r in running} == {"RUNNING"}  # a job's run, 2 instances
        # Created by the writer process once it was up, yet dated from the job's start.
        assert all(r.info.start_time / 1000 < time.time() - 1 and r.info.start_time / 1000 > started for r in running)

        interrupted, interrupted_at = time.monotonic(), time.time()
        os.killpg(process.pid, signal.SIGINT)
        code = process.wait(60)
        seconds = time.monotonic() - interrupted
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    output = (app.cwd / "sweep.log").read_text()
    assert code == 130, output
    assert seconds < 15, f"took {seconds:.1f} s to stop"
    assert "flowsweep: interrupted" in output and "Traceback" not in output
    runs = all_runs(uri)
    assert {r.info.run_id for r in runs} == {r.info.run_id for r in running}, "another job started"
    assert {r.info.status for r in runs} == {"KILLED"}
    assert all(r.info.end_time / 1000 >= interrupted_at - 1 for r in runs)
    assert "#1 :" not in output  # Hydra never launched job 1


def test_an_interrupt_a_library_turns_into_its_own_error_is_still_an_interrupt():
    # What OmegaConf did once mid-composition: SIGINT arrived inside it and came out as its own error.
    script = textwrap.dedent("""
        import os, signal, time
        from flowsweep.app.interrupt import install, interrupted
        install()
        try:
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(5)
            except BaseException:
                raise ValueError("a library's own error")
        except ValueError:
            pass
        print(interrupted())
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert done.stdout.strip() == "True", done.stderr
