"""Command-line conveniences applied before Hydra parses the overrides.

Hydra parses ``depth=8`` as the integer 8, and a config-group override must be a
string, so the depth group's options (named ``2``, ``4``, ``6``, ``8``) would need
quoting (``depth='8'``). :func:`quote_depth` adds the quotes, also for sweeps such as
``depth=2,4,6,8``, so users type what they mean. A depth without an option file
(``depth=3``) becomes ``depth.layers=3``: any depth works the same way, and an impossible
one (``depth=-3``, ``depth=2.5``) is then rejected naming ``depth.layers``.

:func:`unknown_option` finds a config-group override naming an option that ``conf/`` does
not have (``dataset=foo``, ``+experiment=nope``, one value of a sweep), so that main.py
says so in one line, with the options there are, before Hydra prints its page of them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional, Sequence

from flowsweep.config.paths import CONF_DIR

__all__ = ["quote_depth", "unknown_option"]

_NUMBER = r"[-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?"
_DEPTH = re.compile(rf"^(depth=)({_NUMBER}(?:,{_NUMBER})*)$")
_DEPTH_OPTIONS = CONF_DIR / "depth"


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


def unknown_option(args: Sequence[str], conf: Path = CONF_DIR) -> Optional[str]:
    """What is wrong with the first override in ``args`` that chooses an option ``conf/<group>/``
    does not hold (``None``: none does). Overrides of other keys, of groups that are not folders
    of ``conf/`` (Hydra's own, such as ``hydra/launcher``), deletions, ``null`` and overrides
    Hydra cannot parse are left to Hydra, and so is everything where the command adds a config
    folder of its own (``--config-dir``, ``hydra.searchpath``), which may hold more options."""
    if any(a.startswith(("--config-dir", "-cd", "--config-path", "-cp", "hydra.searchpath", "+hydra.searchpath"))
           for a in args):
        return None
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    for arg in args:
        if arg.startswith("-") or "=" not in arg:
            continue
        try:
            override = parser.parse_override(arg)
        except HydraException:
            continue
        folder = conf / override.key_or_group
        if override.is_delete() or not folder.is_dir():
            continue
        values = list(override.sweep_iterator()) if override.is_sweep_override() else [override.value()]
        options = sorted(f.stem for f in folder.glob("*.yaml") if not f.stem.startswith("_"))
        for value in values:
            if isinstance(value, str) and value != "null" and not (folder / f"{value}.yaml").is_file():
                return f"{override.key_or_group}: no option {value!r} in conf/{override.key_or_group}/; " \
                       f"choose from {', '.join(options)}"
    return None
