"""Random search: a fresh random structure every trial, the best one kept.

At the same trial budget it is the fair baseline for the evolutionary search.
"""

from __future__ import annotations

from dataclasses import dataclass

from flowsweep.search.base import StructureOptimizer
from flowsweep.structure import Structure

__all__ = ["RandomSearch"]


@dataclass
class RandomSearch(StructureOptimizer):
    """Each iteration one uniformly random structure; accepted when ``<=`` the best."""

    def propose(self) -> list[Structure]:
        return [self.random_structure()]
