"""Command-line conveniences applied before Hydra parses the overrides.

Hydra parses ``depth=8`` as the integer 8, and a config-group override must be a
string, so the depth group's options (named ``2``, ``4``, ``6``, ``8``) would need
quoting (``depth='8'``). :func:`quote_depth` adds the quotes, also for sweeps such as
``depth=2,4,6,8``, so users type what they mean. A depth without an option file
(``depth=3``) becomes ``depth.layers=3``: any depth works the same way, and an impossible
one (``depth=-3``, ``depth=2.5``) is then rejected naming ``depth.layers``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

__all__ = ["quote_depth"]

_NUMBER = r"[-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?"
_DEPTH = re.compile(rf"^(depth=)({_NUMBER}(?:,{_NUMBER})*)$")
_DEPTH_OPTIONS = Path(__file__).resolve().parents[2] / "conf" / "depth"


def quote_depth(args: Sequence[str], options: Path = _DEPTH_OPTIONS) -> list[str]:
    """``["depth=2,4"]`` → ``["depth='2','4'"]``, ``["depth=3"]`` → ``["depth.layers=3"]``.

    Every other argument is kept as is.
    """
    out = []
    for arg in args:
        match = _DEPTH.match(arg)
        if not match:
            out.append(arg)
            continue
        values = match.group(2).split(",")
        if all((options / f"{v}.yaml").is_file() for v in values):
            out.append("depth=" + ",".join(f"'{v}'" for v in values))
        else:
            out.append("depth.layers=" + match.group(2))
    return out
