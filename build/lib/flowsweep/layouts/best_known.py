"""``layout=best_known``: the best structure known for a benchmark dataset and depth, shipped as data.

The files are ``flowsweep/structure/best_known/<dataset>_L<depth>.json``: a masks.json
(:meth:`flowsweep.structure.Structure.to_dict`) plus how it was found (the command, the
commit, its validation bpd, the runner-up), written by ``python -m flowsweep.bench
best-known`` (docs/benchmarks.md). A structure holds for the table it was found on, so
the generator settings recorded beside it (``synthetic``) must equal the job's
``dataset.synthetic``. Every instance of the job trains the same structure.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf

from flowsweep.config import ConfigError
from flowsweep.layouts.base import Layout, LayoutJob
from flowsweep.layouts.given import _checked
from flowsweep.structure import Structure

__all__ = ["BEST_KNOWN_DIR", "BestKnown", "best_known", "best_known_path"]

#: The shipped best known structures (package data, see pyproject.toml).
BEST_KNOWN_DIR = Path(__file__).resolve().parents[1] / "structure" / "best_known"


def best_known_path(dataset: str, depth: int) -> Path:
    """Where the best known structure of ``dataset`` at ``depth`` layers is shipped."""
    return BEST_KNOWN_DIR / f"{dataset}_L{depth}.json"


def best_known(dataset: str, synthetic: Optional[Mapping[str, Any]], d: int, m: int, depth: int) -> Structure:
    """The shipped best known structure of ``dataset`` at ``depth``, checked against the job's
    ``d``, ``m``, ``depth`` and generator settings ``synthetic`` (``None`` for other data)."""
    file = best_known_path(dataset, depth)
    if not file.is_file():
        known = sorted(p.stem for p in BEST_KNOWN_DIR.glob("*.json"))
        raise ConfigError("layout", f"layout=best_known: no best known structure of {dataset} at depth {depth} "
                                    f"(known: {', '.join(known) or 'none'})")
    text = file.read_text(encoding="utf-8")
    recorded = json.loads(text).get("synthetic")
    if recorded is not None and dict(synthetic or {}) != recorded:
        raise ConfigError("layout", f"layout=best_known: {file.name} was found on dataset.synthetic={recorded}, "
                                    "the job's differs")
    return _checked(text, "layout", str(file), d, m, depth)


@dataclass
class BestKnown(Layout):
    """The shipped best known structure of the job's dataset and depth, for every instance."""

    given = True

    def structures(self, job: LayoutJob) -> list[Structure]:
        node = job.cfg.dataset.get("synthetic")
        synthetic = OmegaConf.to_container(node) if node is not None else None
        plain = {str(k): v for k, v in synthetic.items()} if isinstance(synthetic, dict) else None
        return [best_known(job.data.name, plain, job.data.d, job.m, job.depth)] * len(job.seeds)
