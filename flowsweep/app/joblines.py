"""Hydra's per-job error lines of a multirun, dropped: flowsweep's sweep report says them once.

Each time a sweeper or a callback reads a failed job's result, Hydra's ``JobReturn``
writes ``Error executing job with overrides: [...]`` to stderr: once for flowsweep's
record of the job, once more for the sweeper (twice per job in an Optuna study). The
sweep report (:class:`~flowsweep.app.callbacks.SweepReport`) prints one line per failed
job with its overrides and its error, so these lines only repeat it. After the line of a
:class:`~flowsweep.app.callbacks.JobFailed` (a job's bad input, reported in one line)
Hydra's hint to set ``HYDRA_FULL_ERROR=1`` for a stack trace is dropped too: there is none
to see.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any, Iterator, TextIO

__all__ = ["HYDRA_JOB_LINE", "HYDRA_HINT", "JOB_FAILED_PREFIX", "dropping_hydra_job_lines"]

#: How Hydra (hydra.core.utils.JobReturn.return_value) opens the line.
HYDRA_JOB_LINE = "Error executing job with overrides:"
#: What Hydra (hydra._internal.utils.run_and_report) writes after any error it reports.
HYDRA_HINT = "Set the environment variable HYDRA_FULL_ERROR=1"
#: How Hydra's line of a :class:`~flowsweep.app.callbacks.JobFailed` opens (its ``PREFIX``).
JOB_FAILED_PREFIX = "flowsweep: error: a job failed: "


class _Dropping:
    """A stderr that passes every write on except Hydra's per-job error line (written in one call)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._after_job_failed = False

    def write(self, text: str) -> int:
        after, self._after_job_failed = self._after_job_failed, text.startswith(JOB_FAILED_PREFIX)
        if text.startswith(HYDRA_JOB_LINE) or (after and text.strip().startswith(HYDRA_HINT)):
            return len(text)
        return self._stream.write(text)

    def __getattr__(self, name: str) -> Any:  # flush, fileno, isatty ...: the stream's own
        return getattr(self._stream, name)


@contextlib.contextmanager
def dropping_hydra_job_lines() -> Iterator[None]:
    """While inside, ``sys.stderr`` drops Hydra's per-job error lines."""
    before = sys.stderr
    sys.stderr = _Dropping(before)
    try:
        yield
    finally:
        sys.stderr = before
