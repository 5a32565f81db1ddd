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

__all__ = ["ORDERS", "CONSTANTS", "DIRECTIONS", "INITS", "CONDITIONERS", "ModelSpec", "ParamLayout"]

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
#: ``tanh``: ``(s, t) = tanh(W x_B + b)``, the paper's single layer; ``mlp``: ``tanh(W relu(V x_B + v) + b)``
#: with ``hidden`` units.
CONDITIONERS = CHOICES["model.conditioner"]


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
    #: Hidden units of the ``mlp`` conditioner (unused by ``tanh``).
    hidden: int = 32

    def __post_init__(self) -> None:
        for key, value, allowed in (("order", self.order, ORDERS), ("constant", self.constant, CONSTANTS),
                                    ("direction", self.direction, DIRECTIONS), ("init", self.init, INITS),
                                    ("conditioner", self.conditioner, CONDITIONERS)):
            if value not in allowed:
                raise ValueError(f"model.{key}: must be one of {allowed}, got {value!r}")
        if not 1 <= self.m <= self.d - 1:
            raise ValueError(f"model.m: must be in 1..{self.d - 1}, got {self.m}")
        if self.conditioner == "mlp" and self.hidden < 1:
            raise ValueError(f"model.hidden: must be >= 1, got {self.hidden}")

    @classmethod
    def from_config(cls, model: Any, d: int, m: int, depth: int) -> ModelSpec:
        """The spec of a job: ``model`` is the ``model`` config node."""
        return cls(d=d, m=m, depth=depth, order=str(model.order), constant=str(model.constant),
                   direction=str(model.direction), init=str(model.init), conditioner=str(model.conditioner),
                   hidden=int(model.hidden))

    @property
    def dm(self) -> int:
        """Features each coupling transforms, ``d - m``."""
        return self.d - self.m

    def layout(self) -> ParamLayout:
        """``scale`` and ``shift`` ``[L, d]`` of the constant transforms (``scale`` is the log-scale
        ``a`` for ``exp``, ``s`` itself for ``linear``), indexed by feature; then the conditioners:
        ``weight [L, 2dm, fan_in]`` (rows ``s`` then ``t`` of the transformed features in sorted
        order, columns the conditioning features in sorted order, or the hidden units) and
        ``bias [L, 2dm]``, after ``hidden_weight [L, hidden, m]`` and ``hidden_bias [L, hidden]`` for ``mlp``."""
        L, d, m, dm = self.depth, self.d, self.m, self.dm
        blocks: list[tuple[str, tuple[int, ...]]] = [("scale", (L, d)), ("shift", (L, d))]
        fan_in = m
        if self.conditioner == "mlp":
            blocks += [("hidden_weight", (L, self.hidden, m)), ("hidden_bias", (L, self.hidden))]
            fan_in = self.hidden
        blocks += [("weight", (L, 2 * dm, fan_in)), ("bias", (L, 2 * dm))]
        return ParamLayout(tuple(blocks))
