"""Hydra's per-job error lines of a multirun, dropped: flowsweep's sweep report says them once.

Each time a sweeper or a callback reads a failed job's result, Hydra's ``JobReturn``
writes ``Error executing job with overrides: [...]`` to stderr: once for flowsweep's
record of the job, once more for the sweeper (twice per job in an Optuna study). The
sweep report (:class:`~flowsweep.app.callbacks.SweepReport`) prints one line per failed
job with its overrides and its error, so these lines only repeat it. After the line of a
:class:`~flowsweep.app.callbacks.JobFailed` (a job's bad input, reported in one line)
Hydra's hint to set ``HYDRA_FULL_ERROR=1`` for a stack trace is dropped too: there is none
to see.

An Optuna study whose every trial failed ends in the sweeper asking the study for its best
trial, and optuna's ``ValueError: Record does not exist.`` traceback: the failures are the
report's, so that traceback becomes one line (:data:`NO_TRIAL_LINE`). Every other traceback
passes through whole.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any, Iterator, TextIO

__all__ = ["HYDRA_JOB_LINE", "HYDRA_HINT", "JOB_FAILED_PREFIX", "NO_TRIAL_LINE", "dropping_hydra_job_lines"]

#: How Hydra (hydra.core.utils.JobReturn.return_value) opens the line.
HYDRA_JOB_LINE = "Error executing job with overrides:"
#: What Hydra (hydra._internal.utils.run_and_report) writes after any error it reports.
HYDRA_HINT = "Set the environment variable HYDRA_FULL_ERROR=1"
#: How Hydra's line of a :class:`~flowsweep.app.callbacks.JobFailed` opens (its ``PREFIX``).
JOB_FAILED_PREFIX = "flowsweep: error: a job failed: "
#: How a traceback that Hydra prints opens, and how optuna's "no trial completed" one ends.
_TRACEBACK, _NO_TRIAL = "Traceback (most recent call last):", "ValueError: Record does not exist."
#: What flowsweep says instead of that traceback.
NO_TRIAL_LINE = ("flowsweep: error: hydra.sweeper: the Optuna study has no completed trial, so no best one: "
                 "every trial failed (the report names each)\n")


class _Dropping:
    """A stderr that passes every write on except Hydra's per-job error line (written in one call)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._after_job_failed = False
        self._traceback: list[str] = []  # a traceback Hydra is printing, held until its last line

    def write(self, text: str) -> int:
        if self._traceback or text.startswith(_TRACEBACK):
            # A traceback is written in pieces: its frames indented, and its last line, the
            # exception, not; held until then, it is passed on whole unless it is the one above.
            self._traceback.append(text)
            if text[:1].strip() and not text.startswith(_TRACEBACK):
                whole, self._traceback = "".join(self._traceback), []
                self._stream.write(NO_TRIAL_LINE if text.strip() == _NO_TRIAL else whole)
            return len(text)
        after, self._after_job_failed = self._after_job_failed, text.startswith(JOB_FAILED_PREFIX)
        if text.startswith(HYDRA_JOB_LINE) or (after and text.strip().startswith(HYDRA_HINT)):
            return len(text)
        return self._stream.write(text)

    def close_traceback(self) -> None:
        """Pass on a traceback still held (one cut off before its last line)."""
        if self._traceback:
            self._stream.write("".join(self._traceback))
            self._traceback = []

    def __getattr__(self, name: str) -> Any:  # flush, fileno, isatty ...: the stream's own
        return getattr(self._stream, name)


@contextlib.contextmanager
def dropping_hydra_job_lines() -> Iterator[None]:
    """While inside, ``sys.stderr`` drops Hydra's per-job error lines."""
    before = sys.stderr
    sys.stderr = dropping = _Dropping(before)
    try:
        yield
    finally:
        dropping.close_traceback()
        sys.stderr = before
