"""``python -m flowsweep score|sample``: a saved density on the command line.

    python -m flowsweep score model=runs:/<id>/model data=new.csv out=scores.csv [quantile=0.01]
    python -m flowsweep sample model=runs:/<id>/model n=1000 out=samples.csv [seed=0]

``score`` writes one row per input row: ``log_density`` (nats, raw units) and ``outlier``
(1 where the row's log-density lies below the ``quantile`` of the training rows' scores, kept
with the model: 0.001, 0.01, 0.05 or 0.5). ``data`` is a CSV file with a header row naming the
model's columns (any order). ``sample`` writes ``n`` rows with the table's columns. The store of
a ``runs:/`` or ``models:/`` URI is ``tracking_uri=``, else ``MLFLOW_TRACKING_URI``, else
``./mlflow.db``. Bad input is one line on stderr and exit status 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional, Sequence

__all__ = ["main"]

_KEYS = {"score": {"model", "data", "out", "quantile", "tracking_uri"},
         "sample": {"model", "n", "out", "seed", "tracking_uri"}}
_REQUIRED = {"score": ("model", "data", "out"), "sample": ("model", "n", "out")}


class UsageError(ValueError):
    """A bad command line; the message names the key."""


def _parse(argv: Sequence[str]) -> tuple[str, dict[str, str]]:
    if not argv or argv[0] not in _KEYS:
        raise UsageError(f"command: expected 'score' or 'sample', got {argv[0] if argv else 'nothing'!r} "
                         f"(python -m flowsweep score model=... data=new.csv out=scores.csv)")
    command, args = argv[0], {}
    for item in argv[1:]:
        key, eq, value = item.partition("=")
        if not eq or key not in _KEYS[command]:
            raise UsageError(f"{item}: expected key=value with key one of {sorted(_KEYS[command])}")
        args[key] = value
    missing = [k for k in _REQUIRED[command] if k not in args]
    if missing:
        raise UsageError(f"{missing[0]}: missing; {command} needs {', '.join(f'{k}=...' for k in _REQUIRED[command])}")
    return command, args


def _number(args: dict[str, str], key: str, kind: type, default: Optional[str] = None) -> float:
    text = args.get(key, default)
    try:
        return kind(text)
    except (TypeError, ValueError):
        raise UsageError(f"{key}: expected a number, got {text!r}") from None


def run(argv: Sequence[str]) -> str:
    """Do what ``argv`` asks; returns the line to print."""
    import pandas as pd

    from flowsweep.density import load

    command, args = _parse(argv)
    out = Path(args["out"])
    if not out.parent.is_dir():
        raise UsageError(f"out: folder {out.parent} does not exist")
    density = load(args["model"], args.get("tracking_uri"))
    if command == "sample":
        n = int(_number(args, "n", int))
        if n < 1:
            raise UsageError(f"n: must be >= 1, got {n}")
        density.sample(n, random_state=int(_number(args, "seed", int, "0"))).to_csv(out, index=False)
        return f"{out}: {n} rows sampled from {args['model']}"
    data = Path(args["data"])
    if not data.is_file():
        raise UsageError(f"data: {data}: no such file")
    try:
        rows = pd.read_csv(data)
    except (ValueError, UnicodeDecodeError) as error:
        raise UsageError(f"data: {data}: not a CSV file with a header row ({error})") from None
    quantile = float(_number(args, "quantile", float, "0.01"))
    threshold = density.outlier_threshold(quantile)
    try:
        scores = density.score_samples(rows)
    except ValueError as error:
        raise UsageError(f"{data}: {error}") from None
    pd.DataFrame({"log_density": scores, "outlier": (scores < threshold).astype(int)}).to_csv(out, index=False)
    flagged = int((scores < threshold).sum())
    return (f"{out}: {len(scores)} rows scored; {flagged} below the {quantile:g} quantile of the training rows' "
            f"log-density ({threshold:.3f} nats)")


def main(argv: Optional[Sequence[str]] = None) -> int:
    from flowsweep.density import ModelFormatError

    try:
        print(run(list(sys.argv[1:] if argv is None else argv)), flush=True)
    except (UsageError, ModelFormatError, ValueError) as error:
        print(f"flowsweep: error: {error}", file=sys.stderr, flush=True)
        return 2
    return 0
