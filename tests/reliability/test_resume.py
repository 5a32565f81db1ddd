"""Resume: a multirun killed mid-sweep (SIGKILL), launched again with the same command.

Jobs whose runs FINISHED are skipped, recognised by their config's fingerprint; the
interrupted job trains again and its partial runs end KILLED; nothing finished is
lost or doubled. (``rerun=true``, which trains a finished config again, is used by
test_numerics.py.)
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter

from .conftest import all_runs, instance_runs, tiny

#: Job 1 trains long enough (60000 steps, about 25 s) to be caught RUNNING on a loaded CI machine: the
#: writer process may put a job's runs into the store seconds after the job starts training (with
#: 15000 steps one CI run saw job 1's runs RUNNING only once it had finished, and the kill fell in
#: job 2); jobs 0 and 2 are tiny.
#: Early stopping is off: it ended job 1 within a few hundred milliseconds once stopped models
#: cost nothing, before the test could catch it.
SWEEP = ["-m", *tiny("train.steps=5,60000,6", "train.patience=null"), "hydra.sweep.dir=multirun"]


def _statuses(uri: str) -> Counter:
    return Counter(r.info.status for r in instance_runs(all_runs(uri)))


def _kill_when_second_job_runs(process, uri: str, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, "the sweep ended before it could be killed mid-way"
        counts = _statuses(uri)
        if counts["FINISHED"] == 2 and counts["RUNNING"] == 2:  # job 0 done, job 1 training
            os.kill(process.pid, signal.SIGKILL)
            process.wait(30)
            return
        time.sleep(0.1)
    raise AssertionError(f"job 1 never ran: {_statuses(uri)}")


def _by_steps(uri: str) -> dict[str, Counter]:
    """Run statuses per job, named by its ``train.steps``.

    Jobs are told apart by their fingerprint tag, which a run gets when it is created: a
    run killed before its params were logged has the tag but no params.
    """
    runs = all_runs(uri)
    steps = {r.data.tags["fingerprint"]: r.data.params["train.steps"] for r in runs if "train.steps" in r.data.params}
    table: dict[str, Counter] = {}
    for run in instance_runs(runs):
        table.setdefault(steps[run.data.tags["fingerprint"]], Counter())[run.info.status] += 1
    return table


def test_a_killed_sweep_resumes_where_it_stopped(flowsweep_with_store):
    app, uri = flowsweep_with_store, flowsweep_with_store.default_uri
    process = app.popen(*SWEEP, log=app.cwd / "first.log")
    _kill_when_second_job_runs(process, uri)
    assert _by_steps(uri) == {"5": Counter(FINISHED=2), "60000": Counter(RUNNING=2)}
    finished_before = {r.info.run_id: r.data.metrics for r in all_runs(uri) if r.info.status == "FINISHED"}

    done = app(*SWEEP)
    assert done.returncode == 0, done.stderr
    assert "skipped: this config" in done.stdout + done.stderr
    # Job 0 skipped (its runs untouched), job 1 again (the killed attempt KILLED), job 2 new.
    assert _by_steps(uri) == {"5": Counter(FINISHED=2), "60000": Counter(KILLED=2, FINISHED=2),
                              "6": Counter(FINISHED=2)}
    after = {r.info.run_id: r for r in all_runs(uri)}
    assert all(after[run_id].data.metrics == metrics for run_id, metrics in finished_before.items())
    # The killed attempt's parent run ended KILLED with its instances; nothing stays RUNNING.
    assert Counter(r.info.status for r in after.values() if r.data.tags["flowsweep.role"] == "job") == Counter(
        FINISHED=3, KILLED=1)
