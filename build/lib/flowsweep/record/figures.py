"""Figures drawn beside the job: a job hands the data of a figure to its MLflow writer process
(:mod:`flowsweep.record.mlflow_writer`), which draws it and logs it while the job trains on.

Drawing a figure costs tens of milliseconds of matplotlib; a grid draws hundreds. Drawn by
the job, they were a quarter of the paper grid's wall time; handed over, a figure costs the
job the encoding of its data (JSON, a few milliseconds) and the writer draws it on the
other core. A drawing function is marked with :func:`figure`, takes the file to write as
its first argument and plain values (numbers, strings, lists) after it; the request names
it as ``module:function``, and the writer draws only marked functions of flowsweep's own
modules (the request is JSON, so nothing it carries can run code)::

    @figure
    def draw_samples(path: Path, samples: list, held_out: list, title: str) -> None: ...

    runs.figure(JOB, "samples.png", draw_samples, samples=x.tolist(), held_out=y.tolist(), title=t)

The figure's file type follows its name (``.png``, ``.pdf``, ``.svg``).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Callable, TypeVar

__all__ = ["figure", "figure_name", "draw"]

_MARK = "__flowsweep_figure__"
F = TypeVar("F", bound=Callable[..., None])


def figure(fn: F) -> F:
    """Mark ``fn(path, **data)`` as a figure the writer process may draw."""
    setattr(fn, _MARK, True)
    return fn


def figure_name(fn: Callable[..., None]) -> str:
    """``module:function`` of a marked drawing function (what a request carries)."""
    if not getattr(fn, _MARK, False):
        raise TypeError(f"{fn!r} is not marked with @flowsweep.record.figures.figure")
    return f"{fn.__module__}:{fn.__qualname__}"


def draw(name: str, path: Path, data: dict[str, Any]) -> None:
    """Draw the figure ``name`` (``module:function``) of ``data`` into ``path`` (the writer's side)."""
    module, _, function = name.partition(":")
    if not module.startswith("flowsweep."):
        raise ValueError(f"figure {name!r}: not a flowsweep module")
    fn = getattr(importlib.import_module(module), function, None)
    if fn is None or not getattr(fn, _MARK, False):
        raise ValueError(f"figure {name!r}: no such figure")
    fn(path, **data)
