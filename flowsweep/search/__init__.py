"""Structure optimizers (ask/tell) and the batched evaluation of their trials."""

from flowsweep.search.base import StructureOptimizer, Trial, TrialState
from flowsweep.search.evolutionary import Evolutionary, EvolutionaryLambda, modify
from flowsweep.search.random_search import RandomSearch

__all__ = [
    "StructureOptimizer",
    "Trial",
    "TrialState",
    "Evolutionary",
    "EvolutionaryLambda",
    "RandomSearch",
    "modify",
]
