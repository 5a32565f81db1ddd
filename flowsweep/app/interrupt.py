"""Ctrl-C, remembered: whether this process was interrupted, whatever became of the exception.

SIGINT raises :class:`KeyboardInterrupt` wherever the main thread happens to be. Inside a
library that catches broadly (OmegaConf composing the next job's config, for one) it can
come out as an ordinary error, and the sweep would then end with status 1 and its runs
FAILED. :func:`install` keeps Python's behaviour — the exception is still raised — and
also records the signal, so that ``main.py`` exits 130 and a job ends its runs KILLED
after any interrupt.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Optional

__all__ = ["install", "interrupted"]

_seen = threading.Event()


def _on_sigint(signum: int, frame: Optional[FrameType]) -> None:
    _seen.set()
    signal.default_int_handler(signum, frame)


def install() -> None:
    """Record SIGINT from now on; left alone where SIGINT is ignored or handled by someone else."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_sigint)


def interrupted() -> bool:
    """Whether SIGINT arrived since :func:`install`."""
    return _seen.is_set()
