"""Structure optimizers (ask/tell), how their trials are evaluated, and the batched runner."""

from flowsweep.search.base import Proposal, StructureOptimizer, Trial, TrialState
from flowsweep.search.evaluation import Evaluation
from flowsweep.search.evolutionary import Evolutionary, EvolutionaryLambda, modify
from flowsweep.search.guided import Guided, swap
from flowsweep.search.halving import Halving
from flowsweep.search.random_search import RandomSearch
from flowsweep.search.regularized import RegularizedEvolution

__all__ = [
    "Proposal",
    "StructureOptimizer",
    "Trial",
    "TrialState",
    "Evaluation",
    "Evolutionary",
    "EvolutionaryLambda",
    "Guided",
    "Halving",
    "RandomSearch",
    "RegularizedEvolution",
    "modify",
    "swap",
]
