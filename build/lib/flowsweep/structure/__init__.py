"""Conditional structures and where they come from: the :class:`Structure` value and its
builders (:mod:`.masks`), planted dependency graphs (:mod:`.graph`), the features' estimated
dependence (:mod:`.dependence`). The layouts that choose a job's structures are
:mod:`flowsweep.layouts`.
"""

from flowsweep.structure.masks import (
    MASKS_ARTIFACT,
    Structure,
    StructureError,
    parity_structure,
    random_structure,
    reshuffle_layers,
)

__all__ = [
    "MASKS_ARTIFACT",
    "Structure",
    "StructureError",
    "parity_structure",
    "random_structure",
    "reshuffle_layers",
]
