"""What one model is: the paper's open choices as a value, and its parameter layout.

:class:`ModelSpec` names a member of the model family: ``d`` features, ``m`` of them
conditioning each of ``depth`` couplings, plus every choice the paper leaves open
(``model.*`` in ``conf/config.yaml``). :class:`ParamLayout` says where each parameter
of one model lives in its flat row of ``P`` numbers; it is the only place that does,
so the reference model, the native kernel (which receives the offsets) and the
optimizers never repeat it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from flowsweep.config import CHOICES

__all__ = ["ORDERS", "CONSTANTS", "DIRECTIONS", "INITS", "CONDITIONERS", "COUPLINGS", "ACTIVATIONS", "ModelSpec",
           "ParamLayout"]

#: ``constant_first``: a layer is the affine constant transform followed by the coupling, as
#: the text says; ``coupling_first``: the coupling, then the constant transform (F = c ∘ f
#: read as function composition, as the formula writes).
ORDERS = CHOICES["model.order"]
#: The affine constant transform: ``exp``, ``x * exp(a) + c`` (a scale that stays positive);
#: ``linear``, ``s * x + c`` as written (any non-zero ``s``, log-determinant ``log|s|``).
CONSTANTS = CHOICES["model.constant"]
#: ``normalizing``: the layers as written map data to latent (the density is computed
#: through them); ``generative``: they map latent to data, as normflows defines a flow, and
#: the density goes through their inverses.
DIRECTIONS = CHOICES["model.direction"]
#: ``uniform``: conditioners as ``nn.Linear`` initialises them, ``U(±1/sqrt(fan_in))``;
#: ``zero``: the conditioners' output layer starts at zero, so the flow starts as the identity.
#: Constant transforms always start as the identity.
INITS = CHOICES["model.init"]
#: The conditioner network ``net(x_B)``: ``tanh``, one linear layer ``W x_B + b`` (the paper's,
#: named after the squashing the affine coupling puts on it); ``mlp``, hidden layers of
#: ``hidden`` units with ``activation`` between them, then the linear output layer.
CONDITIONERS = CHOICES["model.conditioner"]
#: The coupling: ``affine``, ``(s, t) = tanh(net(x_B))``, ``y_A = x_A exp(s) + t`` (the paper's);
#: ``spline``, a monotonic rational-quadratic spline per transformed feature (Durkan et al. 2019)
#: with ``bins`` bins on ``[-tail_bound, tail_bound]`` and identity (linear) tails outside, its
#: ``3 bins - 1`` parameters the raw outputs of ``net(x_B)`` (flowsweep.model.spline).
COUPLINGS = CHOICES["model.coupling"]
#: The hidden layers' activation of the ``mlp`` conditioner.
ACTIVATIONS = CHOICES["model.activation"]


@dataclass(frozen=True)
class ParamLayout:
    """Named blocks of one model's flat parameter row, in order.

    ``blocks`` holds ``(name, shape)`` pairs; a row is their concatenation, each block
    C-contiguous. Every block's shape starts with the layer axis ``L``.
    """

    blocks: tuple[tuple[str, tuple[int, ...]], ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.blocks)

    @property
    def numel(self) -> int:
        """``P``, the number of parameters of one model."""
        return sum(math.prod(shape) for _, shape in self.blocks)

    def shape(self, name: str) -> tuple[int, ...]:
        return dict(self.blocks)[name]

    def offset(self, name: str) -> int:
        """Index of block ``name``'s first number within a row."""
        start = 0
        for block, shape in self.blocks:
            if block == name:
                return start
            start += math.prod(shape)
        raise KeyError(name)

    def split(self, flat: Tensor) -> dict[str, Tensor]:
        """``flat`` ``[K, P]`` → views ``{name: [K, *shape]}`` (they share its storage)."""
        sizes = [math.prod(shape) for _, shape in self.blocks]
        parts = flat.split(sizes, dim=-1)
        return {name: part.view(*flat.shape[:-1], *shape) for (name, shape), part in zip(self.blocks, parts)}


@dataclass(frozen=True)
class ModelSpec:
    """One member of the model family; see the module constants for each choice."""

    d: int
    m: int
    depth: int
    order: str = "constant_first"
    constant: str = "exp"
    direction: str = "normalizing"
    init: str = "zero"
    conditioner: str = "tanh"
    #: Units of each hidden layer of the ``mlp`` conditioner (unused by ``tanh``); an int is one layer.
    hidden: tuple[int, ...] = (32,)
    activation: str = "relu"
    coupling: str = "affine"
    #: Bins of the ``spline`` coupling, and the half-width of the interval it spans (unused by ``affine``).
    bins: int = 8
    tail_bound: float = 5.0

    def __post_init__(self) -> None:
        # Plain values only: a list (from JSON or YAML) or an int becomes a tuple, so the spec
        # stays hashable and equal to itself after a round trip through dataclasses.asdict.
        hidden = (self.hidden,) if isinstance(self.hidden, int) else tuple(int(h) for h in self.hidden)
        object.__setattr__(self, "hidden", hidden)
        object.__setattr__(self, "tail_bound", float(self.tail_bound))
        for key, value, allowed in (("order", self.order, ORDERS), ("constant", self.constant, CONSTANTS),
                                    ("direction", self.direction, DIRECTIONS), ("init", self.init, INITS),
                                    ("conditioner", self.conditioner, CONDITIONERS),
                                    ("activation", self.activation, ACTIVATIONS),
                                    ("coupling", self.coupling, COUPLINGS)):
            if value not in allowed:
                raise ValueError(f"model.{key}: must be one of {allowed}, got {value!r}")
        if not 1 <= self.m <= self.d - 1:
            raise ValueError(f"model.m: must be in 1..{self.d - 1}, got {self.m}")
        if self.conditioner == "mlp" and not (hidden and min(hidden) >= 1):
            raise ValueError(f"model.hidden: must be one or more layer widths >= 1, got {list(hidden)}")
        if self.bins < 1:
            raise ValueError(f"model.bins: must be >= 1, got {self.bins}")
        if not self.tail_bound > 0:
            raise ValueError(f"model.tail_bound: must be > 0, got {self.tail_bound}")

    @classmethod
    def from_config(cls, model: Any, d: int, m: int, depth: int) -> ModelSpec:
        """The spec of a job: ``model`` is the ``model`` config node."""
        hidden = model.hidden
        return cls(d=d, m=m, depth=depth, order=str(model.order), constant=str(model.constant),
                   direction=str(model.direction), init=str(model.init), conditioner=str(model.conditioner),
                   hidden=(int(hidden),) if isinstance(hidden, int) else tuple(int(h) for h in hidden),
                   activation=str(model.activation), coupling=str(model.coupling), bins=int(model.bins),
                   tail_bound=float(model.tail_bound))

    @property
    def dm(self) -> int:
        """Features each coupling transforms, ``d - m``."""
        return self.d - self.m

    @property
    def outputs(self) -> int:
        """Outputs of one coupling's conditioner: ``2 dm`` (``s``, ``t``) for ``affine``,
        ``dm (3 bins - 1)`` (widths, heights, inner derivatives per feature) for ``spline``."""
        return 2 * self.dm if self.coupling == "affine" else self.dm * (3 * self.bins - 1)

    @property
    def hidden_layers(self) -> tuple[int, ...]:
        """The widths of the conditioner's hidden layers (none for ``tanh``)."""
        return self.hidden if self.conditioner == "mlp" else ()

    def layout(self) -> ParamLayout:
        """``scale`` and ``shift`` ``[L, d]`` of the constant transforms (``scale`` is the log-scale
        ``a`` for ``exp``, ``s`` itself for ``linear``), indexed by feature; then the conditioners:
        for ``mlp``, ``hidden_weight_i [L, h_i, fan_in]`` and ``hidden_bias_i [L, h_i]`` per hidden
        layer; then ``weight [L, outputs, fan_in]`` and ``bias [L, outputs]``. The input columns are
        the conditioning features in sorted order (or the previous layer's units). The output rows
        are, for ``affine``, ``s`` then ``t`` of the transformed features in sorted order; for
        ``spline``, feature by feature (sorted), its ``bins`` widths, ``bins`` heights and ``bins - 1``
        inner derivatives."""
        L, d = self.depth, self.d
        blocks: list[tuple[str, tuple[int, ...]]] = [("scale", (L, d)), ("shift", (L, d))]
        fan_in = self.m
        for i, width in enumerate(self.hidden_layers):
            blocks += [(f"hidden_weight_{i}", (L, width, fan_in)), (f"hidden_bias_{i}", (L, width))]
            fan_in = width
        blocks += [("weight", (L, self.outputs, fan_in)), ("bias", (L, self.outputs))]
        return ParamLayout(tuple(blocks))
