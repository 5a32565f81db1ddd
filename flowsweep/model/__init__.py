"""The model family: its open choices (:class:`ModelSpec`), its one parameter layout
(:class:`ParamLayout`) and its reference definition (:class:`CouplingFlows`)."""

from flowsweep.model.flow import LOG_2PI, CouplingFlows
from flowsweep.model.spec import CONDITIONERS, CONSTANTS, DIRECTIONS, INITS, ORDERS, ModelSpec, ParamLayout

__all__ = ["CouplingFlows", "ModelSpec", "ParamLayout", "LOG_2PI", "ORDERS", "CONSTANTS", "DIRECTIONS", "INITS",
           "CONDITIONERS"]
