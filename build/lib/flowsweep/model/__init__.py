"""The model family: its open choices (:class:`ModelSpec`), its one parameter layout
(:class:`ParamLayout`) and its one definition (:class:`CouplingFlows`), affine or spline couplings."""

from flowsweep.model.flow import LOG_2PI, CouplingFlows
from flowsweep.model.spec import (ACTIVATIONS, CONDITIONERS, CONSTANTS, COUPLINGS, DIRECTIONS, INITS, ORDERS, ModelSpec,
                                  ParamLayout)

__all__ = ["CouplingFlows", "ModelSpec", "ParamLayout", "LOG_2PI", "ORDERS", "CONSTANTS", "DIRECTIONS", "INITS",
           "CONDITIONERS", "COUPLINGS", "ACTIVATIONS"]
