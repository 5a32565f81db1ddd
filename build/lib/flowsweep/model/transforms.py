"""The transforms of a layer, each defined once with its inverse, batched over K models.

Every function returns ``(outputs, logabsdet)`` like an nflows transform. Shapes: ``K``
models, ``N`` samples, ``d`` features; ``x`` is ``[K, N, d]`` in the data's feature
order. The K models' conditioners run as batched matrix products (``torch.baddbmm``
over ``[K, N, features]``) and each model's masks are gathers, so K models cost one
pass. Gradients come from autograd: nothing here is differentiated by hand.
"""

from __future__ import annotations

import torch
from torch import Tensor

from flowsweep.model.spec import ModelSpec
from flowsweep.model.spline import spline

__all__ = ["affine_constant", "conditioner", "affine_coupling", "spline_coupling", "coupling"]

_ACTIVATIONS = {"relu": torch.relu, "tanh": torch.tanh, "elu": torch.nn.functional.elu}


def affine_constant(x: Tensor, scale: Tensor, shift: Tensor, kind: str, inverse: bool = False) -> tuple[Tensor, Tensor]:
    """``y = e * x + c`` per feature, or its inverse: ``x`` ``[K, N, d]``, ``scale``, ``shift`` ``[K, d]``.

    ``kind`` ``exp``: ``e = exp(scale)``; ``linear``: ``e = scale``. Returns ``y`` and
    ``log|det J|`` ``[K, 1]`` (the same for every sample).
    """
    if kind == "exp":
        log_e, e = scale, scale.exp()
    else:
        log_e, e = scale.abs().log(), scale
    logdet = log_e.sum(-1, keepdim=True)
    if inverse:
        return (x - shift.unsqueeze(1)) / e.unsqueeze(1), -logdet
    return torch.addcmul(shift.unsqueeze(1), x, e.unsqueeze(1)), logdet


def conditioner(x_b: Tensor, params: dict[str, Tensor], hidden_layers: int, activation: str = "relu") -> Tensor:
    """``net(x_b)`` ``[K, N, outputs]`` from the conditioning features ``x_b`` ``[K, N, m]``.

    ``params`` holds one layer's conditioner blocks: ``hidden_weight_i [K, h_i, fan_in]`` and
    ``hidden_bias_i [K, h_i]`` for each of the ``hidden_layers`` hidden layers (followed by
    ``activation``), then the linear output layer ``weight [K, outputs, fan_in]``, ``bias [K, outputs]``.
    """
    h = x_b
    act = _ACTIVATIONS[activation]
    for i in range(hidden_layers):
        h = act(torch.baddbmm(params[f"hidden_bias_{i}"].unsqueeze(1), h, params[f"hidden_weight_{i}"].transpose(1, 2)))
    return torch.baddbmm(params["bias"].unsqueeze(1), h, params["weight"].transpose(1, 2))


def affine_coupling(x_a: Tensor, net: Tensor, inverse: bool = False) -> tuple[Tensor, Tensor]:
    """``y_A = x_A * exp(s) + t`` with ``(s, t) = tanh(net)``, or its inverse: ``x_a`` ``[K, N, dm]``,
    ``net`` ``[K, N, 2dm]`` (``s`` then ``t``). Returns ``y_A`` and ``log|det J|`` ``[K, N]``."""
    s, t = torch.tanh(net).chunk(2, dim=2)
    if inverse:
        return (x_a - t) * torch.exp(-s), -s.sum(2)
    return torch.addcmul(t, x_a, s.exp()), s.sum(2)


def spline_coupling(x_a: Tensor, net: Tensor, bins: int, bound: float, inverse: bool = False) -> tuple[Tensor, Tensor]:
    """A rational-quadratic spline per transformed feature (:func:`~flowsweep.model.spline.spline`):
    ``x_a`` ``[K, N, dm]``, ``net`` ``[K, N, dm (3 bins - 1)]`` (per feature: widths, heights, inner
    derivatives). Returns ``y_A`` and ``log|det J|`` ``[K, N]``."""
    phi = net.unflatten(2, (x_a.shape[2], 3 * bins - 1))
    y, logabsdet = spline(x_a, phi, bins, bound, inverse)
    return y, logabsdet.sum(2)


def coupling(x: Tensor, cond: Tensor, trans: Tensor, params: dict[str, Tensor], spec: ModelSpec,
             inverse: bool = False) -> tuple[Tensor, Tensor]:
    """``y_A = f(x_A; net(x_B))``, ``y_B = x_B``, or its inverse, for ``spec``'s coupling and conditioner.

    ``cond`` ``[K, N, m]`` and ``trans`` ``[K, N, dm]`` are the (sorted) conditioning and
    transformed feature indices of each model, expanded over samples; ``spec`` is the
    :class:`~flowsweep.model.ModelSpec`. Returns ``y`` ``[K, N, d]`` and ``log|det J|`` ``[K, N]``.
    """
    net = conditioner(x.gather(2, cond), params, len(spec.hidden_layers), spec.activation)
    x_a = x.gather(2, trans)
    if spec.coupling == "affine":
        y_a, logdet = affine_coupling(x_a, net, inverse)
    else:
        y_a, logdet = spline_coupling(x_a, net, spec.bins, spec.tail_bound, inverse)
    return x.scatter(2, trans, y_a), logdet
