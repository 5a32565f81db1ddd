"""Conditional structures and where they come from: the :class:`Structure` value and its
builders (:mod:`.masks`), planted dependency graphs (:mod:`.graph`), the features' estimated
dependence (:mod:`.dependence`) and the fixed layouts a job trains (:mod:`.layouts`).
"""

from flowsweep.structure.masks import (
    Structure,
    StructureError,
    parity_structure,
    random_structure,
    reshuffle_layers,
)

__all__ = [
    "Structure",
    "StructureError",
    "parity_structure",
    "random_structure",
    "reshuffle_layers",
]
