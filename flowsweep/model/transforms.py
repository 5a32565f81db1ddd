"""The two transforms of a layer, each defined once with its inverse, batched over K models.

Every function returns ``(outputs, logabsdet)`` like an nflows transform. Shapes: ``K``
models, ``N`` samples, ``d`` features; ``x`` is ``[K, N, d]`` in the data's feature
order. Gradients come from autograd: nothing here is differentiated by hand.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["affine_constant", "conditioner", "affine_coupling"]


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


def conditioner(x_b: Tensor, params: dict[str, Tensor], kind: str) -> tuple[Tensor, Tensor]:
    """``(s, t)``, each ``[K, N, dm]``, from the conditioning features ``x_b`` ``[K, N, m]``.

    ``params`` holds one layer's conditioner blocks (``weight [K, 2dm, fan_in]``, ``bias
    [K, 2dm]``, and for ``mlp`` ``hidden_weight [K, h, m]``, ``hidden_bias [K, h]``).
    """
    h = x_b
    if kind == "mlp":
        h = torch.relu(torch.baddbmm(params["hidden_bias"].unsqueeze(1), h, params["hidden_weight"].transpose(1, 2)))
    out = torch.tanh(torch.baddbmm(params["bias"].unsqueeze(1), h, params["weight"].transpose(1, 2)))
    return out.chunk(2, dim=2)


def affine_coupling(x: Tensor, cond: Tensor, trans: Tensor, params: dict[str, Tensor], kind: str,
                    inverse: bool = False) -> tuple[Tensor, Tensor]:
    """``y_A = x_A * exp(s(x_B)) + t(x_B)``, ``y_B = x_B``, or its inverse.

    ``cond`` ``[K, N, m]`` and ``trans`` ``[K, N, dm]`` are the (sorted) conditioning and
    transformed feature indices of each model, expanded over samples. Returns ``y``
    ``[K, N, d]`` and ``log|det J|`` ``[K, N]``.
    """
    s, t = conditioner(x.gather(2, cond), params, kind)
    x_a = x.gather(2, trans)
    if inverse:
        return x.scatter(2, trans, (x_a - t) * torch.exp(-s)), -s.sum(2)
    return x.scatter(2, trans, torch.addcmul(t, x_a, s.exp())), s.sum(2)
