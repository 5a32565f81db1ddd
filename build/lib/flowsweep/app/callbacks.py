"""Hydra callbacks of every flowsweep job (``hydra.callbacks`` in ``conf/config.yaml``).

:class:`TrackingCallback` prepares the MLflow store of a multirun before jobs fan out.

:class:`SweepReport` tells how the jobs of a multirun went. Hydra's sweeper runs every
job of a batch, then re-raises only the *first* failure and exits 1; the other failures
would be lost in the job logs. The callback records each job's outcome and summary
(:mod:`flowsweep.record.summary`) as ``<sweep dir>/.flowsweep/jobs/<num>.json`` from the process
that ran it (a joblib worker, a SLURM node: the sweep directory is shared) and, when the
launching process exits, prints the sweep's table to stdout (and writes it to
``<sweep dir>/summary.txt``) and one line per failed job to stderr::

    flowsweep: 1 of 4 jobs failed (sweep multirun/2026-11-26/21-44-07):
      #2 dataset.batch_size=5000: ConfigError: dataset.batch_size: 5000 is larger than ...

Both import MLflow only when they use it, so a mistyped override fails in a second.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, NoReturn, Optional

from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import CompactHydraException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from flowsweep.app.joblines import JOB_FAILED_PREFIX, dropping_hydra_job_lines
from flowsweep.config import ConfigError
from flowsweep.files import write_atomic
from flowsweep.record.names import SWEEP_ID_ENV

__all__ = ["LAUNCHER_PID_ENV", "JobFailed", "fail", "TrackingCallback", "RECORDS", "SUMMARY_FILE", "SweepReport", "read_records",
           "format_report"]

#: The launching process's pid, set by :class:`TrackingCallback`: a job that runs in that
#: process (Hydra's basic launcher) need not wait for its MLflow writes (flowsweep.app.run).
LAUNCHER_PID_ENV = "FLOWSWEEP_LAUNCHER_PID"

#: Job records, relative to the sweep directory.
RECORDS = Path(".flowsweep") / "jobs"
#: The sweep's table, relative to the sweep directory.
SUMMARY_FILE = "summary.txt"


class JobFailed(CompactHydraException):
    """A multirun job's error; Hydra reports it in one line instead of a traceback.

    A sweeper raises the first failed job's error once the batch is done: for any other
    exception Hydra prints a traceback, for a :class:`~hydra.errors.CompactHydraException`
    just its text. The sweep report then lists every failed job. ``error_text`` is
    ``<type>: <message>`` of the job's own error (the only argument: it pickles).
    """

    #: How Hydra's line of it opens (:mod:`flowsweep.app.joblines` knows it by this).
    PREFIX = JOB_FAILED_PREFIX

    def __init__(self, error_text: str) -> None:
        super().__init__(error_text)
        self.error_text = error_text

    def __str__(self) -> str:
        return self.PREFIX + self.error_text

    @classmethod
    def of(cls, error: BaseException) -> JobFailed:
        return cls(f"{type(error).__name__}: {error}")


def _error_text(job_return: JobReturn) -> Optional[str]:
    if job_return.status != JobStatus.FAILED:
        return None
    try:  # in this process too (a joblib or submitit worker's is not main.py's)
        with dropping_hydra_job_lines():
            _ = job_return.return_value  # re-raises the job's exception: Hydra's public way to get it
    except JobFailed as error:
        return error.error_text
    except Exception as error:  # any job error is reported, none is handled
        return f"{type(error).__name__}: {error}"
    return "failed without an exception"


def read_records(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """Every job record of a sweep, by job number: ``num``, ``overrides``, ``status``, ``error``,
    ``output_dir`` and ``summary`` (:func:`flowsweep.record.summary.take_last`, ``None`` for a failed job)."""
    folder = Path(sweep_dir) / RECORDS
    records = [json.loads(p.read_text()) for p in folder.glob("*.json")] if folder.is_dir() else []
    return sorted(records, key=lambda r: r["num"])


def format_report(sweep_dir: str | Path) -> Optional[str]:
    """The failure summary of a sweep, or ``None`` when no recorded job failed."""
    records = read_records(sweep_dir)
    failed = [r for r in records if r["status"] == JobStatus.FAILED.name]
    if not failed:
        return None
    # Overrides shared by every job say nothing about which job it was.
    shared = set.intersection(*(set(r["overrides"]) for r in records)) if len(records) > 1 else set()
    lines = [f"flowsweep: {len(failed)} of {len(records)} jobs failed (sweep {sweep_dir}):"]
    for record in failed:
        which = " ".join(o for o in record["overrides"] if o not in shared) or "(no overrides)"
        message = (record["error"] or "").strip().splitlines() or ["no message"]
        lines.append(f"  #{record['num']} {which}: {message[0]}")
    return "\n".join(lines)


def _print_report(sweep_dir: str) -> None:
    from flowsweep.record.summary import sweep_table

    records = read_records(sweep_dir)
    if records:
        done = sum(r["status"] == JobStatus.COMPLETED.name for r in records)
        table = sweep_table(records, f"flowsweep: sweep {sweep_dir}: {done} of {len(records)} jobs completed")
        # Printed, not logged: after the jobs, the process's logging still writes into the
        # last job's main.log (Hydra's launcher configures it per job).
        print(table, flush=True)
        Path(sweep_dir, SUMMARY_FILE).write_text(table + "\n")
    report = format_report(sweep_dir)
    if report:
        print(report, file=sys.stderr, flush=True)


def fail(error: Exception, code: int = 2) -> NoReturn:
    """Print ``flowsweep: error: <error>`` on stderr and exit with ``code``, no traceback.

    SystemExit rather than an exception also gets through Hydra's callback runner,
    which turns exceptions into warnings.
    """
    print(f"flowsweep: error: {error}", file=sys.stderr, flush=True)
    sys.exit(code)


class TrackingCallback(Callback):
    """Fix the ``sweep_id`` that tags every run of one multirun, and in a multirun resolve
    the store and create the experiment once, before jobs fan out.

    A multirun whose store cannot be reached or used stops there, with one message and
    exit code 2, instead of failing every job. A single run creates its experiment itself,
    once its input has checked out, so a mistyped override leaves no store behind.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from flowsweep.config.sweep import check_sweep
        from flowsweep.record.tracking import check_reachable, masked, open_store, resolve_tracking_uri

        try:  # every value the sweep will give, its ranges, trial and worker counts: before any job
            check_sweep(config)
        except ConfigError as error:
            fail(error)
        os.environ[SWEEP_ID_ENV] = config.tracking.sweep_id or str(config.hydra.sweep.dir)
        os.environ[LAUNCHER_PID_ENV] = str(os.getpid())
        uri = resolve_tracking_uri(config.tracking.uri, os.getcwd())
        try:
            check_reachable(uri)
            open_store(uri, config.tracking.experiment)
        except ConfigError as error:
            fail(error)
        except Exception as error:  # whatever the store says, no job could log
            fail(ConfigError("tracking.uri", f"cannot use the MLflow store at {masked(uri)}: "
                                             f"{type(error).__name__}: {error}"))

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        os.environ[SWEEP_ID_ENV] = config.tracking.sweep_id or str(config.hydra.run.dir)


class SweepReport(Callback):
    """Hydra callback: record each multirun job's outcome and summary; at exit, print the
    sweep's table and the failed jobs."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = str(config.hydra.sweep.dir)
        # A reused sweep directory (hydra.sweep.dir fixed) must not report old jobs.
        shutil.rmtree(Path(sweep_dir) / RECORDS, ignore_errors=True)
        # At exit, because the sweeper raises on the first failure and on_multirun_end never runs.
        atexit.register(_print_report, sweep_dir)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        from flowsweep.record.summary import take_last

        take_last()  # a job that fails before its summary must not get its predecessor's

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        from flowsweep.record.summary import take_last

        if config.hydra.mode != RunMode.MULTIRUN:
            return
        num = int(config.hydra.job.num)
        record = {
            "num": num,
            "overrides": list(config.hydra.overrides.task),
            "status": job_return.status.name,
            "error": _error_text(job_return),
            "output_dir": str(config.hydra.runtime.output_dir),
            "summary": take_last(),
        }
        write_atomic(Path(str(config.hydra.sweep.dir)) / RECORDS / f"{num}.json", json.dumps(record, indent=1))
