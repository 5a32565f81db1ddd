"""Ctrl-C and SIGTERM, remembered: whether this process was interrupted, whatever became of the exception.

SIGINT raises :class:`KeyboardInterrupt` wherever the main thread happens to be. Inside a
library that catches broadly (OmegaConf composing the next job's config, for one) it can
come out as an ordinary error, and the sweep would then end with status 1 and its runs
FAILED. :func:`install` keeps Python's behaviour — the exception is still raised — and
also records the signal, so that ``main.py`` exits 130 and a job ends its runs KILLED
after any interrupt.

SIGTERM (what ``kill``, SLURM at a time limit or a preemption, and most schedulers send)
is handled the same way: it raises :class:`Terminated`, a :class:`KeyboardInterrupt`, so
the running job ends its runs KILLED, and ``main.py`` exits 143 (128 + SIGTERM). Where a
launcher handles SIGTERM itself (submitit), its handler is left alone.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Optional

__all__ = ["Terminated", "install", "interrupted", "terminated", "exit_code"]

_seen = threading.Event()
_term = threading.Event()


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: stop like Ctrl-C does (the running job's runs end KILLED)."""


def _on_sigint(signum: int, frame: Optional[FrameType]) -> None:
    _seen.set()
    signal.default_int_handler(signum, frame)


def _on_sigterm(signum: int, frame: Optional[FrameType]) -> None:
    _seen.set()
    _term.set()
    raise Terminated()


def install() -> None:
    """Record SIGINT and SIGTERM from now on; each is left alone where it is ignored or handled by someone else."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_sigint)
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)


def interrupted() -> bool:
    """Whether SIGINT or SIGTERM arrived since :func:`install`."""
    return _seen.is_set()


def terminated() -> bool:
    """Whether SIGTERM arrived since :func:`install`."""
    return _term.is_set()


def exit_code() -> int:
    """The status a shell reports for the signal that arrived: 143 after SIGTERM, else 130."""
    return 128 + (signal.SIGTERM if terminated() else signal.SIGINT)
