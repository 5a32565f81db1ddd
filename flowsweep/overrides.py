"""Command-line conveniences applied before Hydra parses the overrides.

Hydra parses ``depth=8`` as the integer 8, and a config-group override must be a
string, so the depth group's options (named ``2``, ``4``, ``6``, ``8``) would need
quoting (``depth='8'``). :func:`quote_depth` adds the quotes, also for sweeps such as
``depth=2,4,6,8``, so users type what they mean.
"""

from __future__ import annotations

import re
from typing import Sequence

__all__ = ["quote_depth"]

_DEPTH = re.compile(r"^(depth=)(\d+(?:,\d+)*)$")


def quote_depth(args: Sequence[str]) -> list[str]:
    """``["depth=2,4"]`` → ``["depth='2','4'"]``; every other argument is kept as is."""
    out = []
    for arg in args:
        match = _DEPTH.match(arg)
        out.append(match.group(1) + ",".join(f"'{v}'" for v in match.group(2).split(",")) if match else arg)
    return out
