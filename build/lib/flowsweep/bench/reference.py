"""The same flows built the usual ways, for the benchmark's side-by-side comparison.

(b) :class:`UsualFlow`: one ``nn.Module`` per model, a Python loop over its layers, each
layer a textbook masked affine coupling (RealNVP style) with an ``nn.Linear``
conditioner and ``tanh``. (c) :func:`nflows_flow`: the same model from nflows'
``AffineCouplingTransform`` and ``ActNorm`` (a learnable elementwise affine). Both are
exactly flowsweep's model: :func:`copy_into_usual` and :func:`copy_into_nflows` load a
model of a :class:`~flowsweep.model.CouplingFlows` (the paper's variant: ``model.*`` at its defaults) into them.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from flowsweep.model import CouplingFlows
from flowsweep.structure import Structure

__all__ = ["UsualCoupling", "UsualFlow", "nflows_flow", "copy_into_usual", "copy_into_nflows"]


class UsualCoupling(nn.Module):
    """Affine constant transform then masked affine coupling over ``d`` features."""

    def __init__(self, d: int, conditioning: tuple[int, ...]):
        super().__init__()
        mask = torch.zeros(d)
        mask[list(conditioning)] = 1.0
        self.register_buffer("mask", mask)
        self.log_scale = nn.Parameter(torch.zeros(d))
        self.shift = nn.Parameter(torch.zeros(d))
        self.conditioner = nn.Linear(d, 2 * d)  # s and t for every feature; masked ones are zeroed

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x`` ``[N, d]`` → ``(y [N, d], log|det J| [N])``."""
        u = x * self.log_scale.exp() + self.shift
        s, t = torch.tanh(self.conditioner(u * self.mask)).chunk(2, dim=1)
        s, t = s * (1 - self.mask), t * (1 - self.mask)
        return u * s.exp() + t, s.sum(1) + self.log_scale.sum()


class UsualFlow(nn.Module):
    """One model: ``L`` :class:`UsualCoupling` layers and a standard normal prior."""

    def __init__(self, structure: Structure):
        super().__init__()
        self.d = structure.d
        self.layers = nn.ModuleList(UsualCoupling(structure.d, c) for c in structure.conditioning)

    def log_prob(self, x: Tensor) -> Tensor:
        """``x`` ``[N, d]`` → log-density ``[N]`` in nats."""
        logdet = 0.0
        for layer in self.layers:
            x, layer_logdet = layer(x)
            logdet = logdet + layer_logdet
        return -0.5 * (x.square().sum(1) + self.d * math.log(2 * math.pi)) + logdet


@torch.no_grad()
def copy_into_usual(target: UsualFlow, flow: CouplingFlows, model: int) -> UsualFlow:
    """Load model ``model`` of ``flow`` into ``target``: compact weights go to their masked places."""
    structure, params = flow.structures[model], flow.params()
    for l, layer in enumerate(target.layers):
        cond, trans = list(structure.conditioning[l]), list(structure.transformed(l))
        rows = trans + [structure.d + i for i in trans]  # s rows, then t rows, of the transformed features
        layer.log_scale.copy_(params["scale"][model, l])
        layer.shift.copy_(params["shift"][model, l])
        layer.conditioner.weight.zero_()
        layer.conditioner.bias.zero_()
        layer.conditioner.weight[torch.tensor(rows).unsqueeze(1), torch.tensor(cond)] = params["weight"][model, l]
        layer.conditioner.bias[rows] = params["bias"][model, l]
    return target


def nflows_flow(structure: Structure) -> nn.Module:
    """One model from nflows: per layer ``ActNorm`` then ``AffineCouplingTransform`` whose
    conditioner is ``tanh(Linear(x_B))`` and whose scale is ``exp(s)``. The result's
    ``log_prob`` is the nflows ``Flow``'s; its ``layers`` are the flow's transforms in order."""
    from nflows.distributions import StandardNormal
    from nflows.flows import Flow
    from nflows.transforms import ActNorm, AffineCouplingTransform, CompositeTransform

    class TanhLinear(nn.Module):
        def __init__(self, inputs: int, outputs: int):
            super().__init__()
            self.linear = nn.Linear(inputs, outputs)

        def forward(self, x: Tensor, context: Optional[Tensor] = None) -> Tensor:
            return torch.tanh(self.linear(x))

    class ExpAffineCoupling(AffineCouplingTransform):
        """nflows' affine coupling with the paper's scale ``exp(s)`` (nflows: a shifted sigmoid),
        through the hook its subclasses override (``AdditiveCouplingTransform`` does too)."""

        def _scale_and_shift(self, transform_params: Tensor) -> tuple[Tensor, Tensor]:
            n = self.num_transform_features
            return transform_params[:, n:].exp(), transform_params[:, :n]

    class NflowsModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            transforms: list[nn.Module] = []
            for conditioning in structure.conditioning:
                norm = ActNorm(structure.d)
                norm.initialized.fill_(True)  # parameters come from the copied model, not from data
                mask = torch.ones(structure.d)
                mask[list(conditioning)] = 0.0  # nflows: > 0 is transformed
                transforms += [norm, ExpAffineCoupling(mask, TanhLinear)]
            self.layers = nn.ModuleList(transforms)
            self.flow = Flow(CompositeTransform(transforms), StandardNormal([structure.d]))

        def log_prob(self, x: Tensor) -> Tensor:
            return self.flow.log_prob(x)

    return NflowsModel()


@torch.no_grad()
def copy_into_nflows(target: nn.Module, flow: CouplingFlows, model: int) -> nn.Module:
    """Load model ``model`` of ``flow`` into an :func:`nflows_flow` (nflows orders shift before scale)."""
    dm, params = flow.d - flow.m, flow.params()
    for l in range(flow.depth):
        norm, coupling = target.layers[2 * l], target.layers[2 * l + 1]
        norm.log_scale.copy_(params["scale"][model, l])
        norm.shift.copy_(params["shift"][model, l])
        weight, bias = params["weight"][model, l], params["bias"][model, l]
        coupling.transform_net.linear.weight.copy_(torch.cat([weight[dm:], weight[:dm]]))
        coupling.transform_net.linear.bias.copy_(torch.cat([bias[dm:], bias[:dm]]))
    return target
