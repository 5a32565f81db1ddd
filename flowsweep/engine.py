"""A batch of K independent affine coupling flows, run as one vectorised model.

Every model ``k`` has its own structure and parameters; layer ``l`` of model ``k`` is
an affine constant transform followed by an affine coupling (the method's layer)::

    u = x * exp(a[k, l]) + c[k, l]
    (s, t) = tanh(W[k, l] u_B + b[k, l])            # u_B: the m conditioning features
    y_A = u_A * exp(s) + t,   y_B = u_B              # u_A: the d - m transformed ones

How it is fast on a CPU (the shapes are tiny, so memory passes and kernel count
decide): activations are kept feature-major, ``[K, d, N]``, and in each layer's own
order (its conditioning features first), so the split into ``u_B`` and ``u_A`` is a
free view. Moving from one layer's order to the next and the constant transform are
one batched matmul with a scaled permutation matrix, instead of gathers and scatters.
``tanh`` is computed as ``2 sigmoid(2x) - 1``, which PyTorch vectorises and its own
``tanh`` does not. Weights are compact: ``W[k, l]`` is ``2(d - m) x m``.

Model ``k`` only ever reads its own slice: its outputs and gradients are the ones it
would have alone.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from flowsweep.structure import Structure

__all__ = ["BatchedCouplingFlow", "LOG_2PI"]

LOG_2PI = math.log(2.0 * math.pi)


class BatchedCouplingFlow(nn.Module):
    """K affine coupling flows over ``d`` features with ``L`` layers each.

    Arguments:
        structures: One :class:`Structure` per model; all share ``d``, ``m`` and ``L``.
        generators: One ``torch.Generator`` per model for its initial parameters;
            ``None`` uses the global generator.
    """

    def __init__(self, structures: Sequence[Structure], generators: Optional[Sequence[torch.Generator]] = None):
        super().__init__()
        first = structures[0]
        self.k, self.d, self.m, self.depth = len(structures), first.d, first.m, first.depth
        k, depth, d, m = self.k, self.depth, self.d, self.m
        #: Constant transforms, indexed by original feature: u = x * exp(log_scale) + shift.
        self.log_scale = nn.Parameter(torch.zeros(k, depth, d))
        self.shift = nn.Parameter(torch.zeros(k, depth, d))
        #: Conditioner rows: s for the d - m transformed features (sorted), then t; columns:
        #: the m conditioning features (sorted).
        self.weight = nn.Parameter(torch.zeros(k, depth, 2 * (d - m), m))
        self.bias = nn.Parameter(torch.zeros(k, depth, 2 * (d - m)))
        #: Layer order: conditioning features then transformed ones, [K, L, d].
        self.register_buffer("perm", torch.zeros(k, depth, d, dtype=torch.long))
        #: Permutation matrices from the previous layer's order (layer 0: the data's) to this one's.
        self.register_buffer("transition", torch.zeros(k, depth, d, d))
        self.structures: list[Structure] = []
        self.set_structures(structures)
        for i in range(k):
            self.reset_parameters(i, None if generators is None else generators[i])

    # -- structure and parameters -------------------------------------------------

    def set_structures(self, structures: Sequence[Structure]) -> None:
        """Replace every model's structure (parameters are left as they are)."""
        if len(structures) != self.k:
            raise ValueError(f"expected {self.k} structures, got {len(structures)}")
        for s in structures:
            if (s.d, s.m, s.depth) != (self.d, self.m, self.depth):
                raise ValueError(f"structure shape {(s.d, s.m, s.depth)} != flow shape {(self.d, self.m, self.depth)}")
        perm = torch.stack([torch.from_numpy(s.permutation()) for s in structures]).to(self.perm.device)
        select = torch.eye(self.d, device=perm.device)[perm]  # [K, L, d, d]; row i picks feature perm[i]
        self.perm.copy_(perm)
        self.transition[:, 0] = select[:, 0]
        self.transition[:, 1:] = select[:, 1:] @ select[:, :-1].transpose(-1, -2)
        self.structures = list(structures)

    @torch.no_grad()
    def reset_parameters(self, model: int, generator: Optional[torch.Generator], layers: Optional[Sequence[int]] = None) -> None:
        """Fresh parameters for ``model`` (all layers, or only ``layers``).

        Constant transforms start as the identity; conditioner weights and biases are
        uniform in ``±1/sqrt(m)``, as ``nn.Linear`` initialises them.
        """
        index = list(range(self.depth)) if layers is None else list(layers)
        if not index:
            return
        bound = 1.0 / math.sqrt(self.m)
        shape_w = (len(index),) + tuple(self.weight.shape[2:])
        shape_b = (len(index),) + tuple(self.bias.shape[2:])
        w = torch.rand(shape_w, generator=generator) * (2 * bound) - bound
        b = torch.rand(shape_b, generator=generator) * (2 * bound) - bound
        self.weight[model, index] = w.to(self.weight)
        self.bias[model, index] = b.to(self.bias)
        self.log_scale[model, index] = 0.0
        self.shift[model, index] = 0.0

    @torch.no_grad()
    def copy_model(self, dst: int, source: BatchedCouplingFlow, src: int, layers: Optional[Sequence[int]] = None) -> None:
        """Copy the parameters of ``source``'s model ``src`` (all or some layers) into model ``dst``."""
        index = list(range(self.depth)) if layers is None else list(layers)
        for name in ("log_scale", "shift", "weight", "bias"):
            getattr(self, name)[dst, index] = getattr(source, name)[src, index]

    @torch.no_grad()
    def initialize_from_data(self, x: Tensor) -> None:
        """Set the first constant transform of every model to standardise ``x`` ``[N, d]``.

        A data-dependent start (as ActNorm in Glow): the flow begins as the map to
        zero mean and unit variance, so plain SGD is well conditioned on raw units.
        """
        mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
        self.log_scale[:, 0] = -std.log()
        self.shift[:, 0] = -mean / std

    def num_parameters(self) -> int:
        """Trainable parameters of one model."""
        return sum(p[0].numel() for p in self.parameters())

    def finite_models(self) -> Tensor:
        """Bool ``[K]``: ``True`` where every parameter of the model is finite."""
        ok = torch.ones(self.k, dtype=torch.bool, device=self.perm.device)
        for p in self.parameters():
            ok &= torch.isfinite(p.detach()).flatten(1).all(1)
        return ok

    # -- transforms -----------------------------------------------------------------

    def _layer_params(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Per layer, in that layer's order: scaled transition ``[K, L, d, d]``, shift
        ``[K, L, d, 1]``, and the conditioner's weight and bias doubled for the sigmoid form."""
        scale = self.log_scale.gather(2, self.perm).exp().unsqueeze(-1)
        moves = self.transition * scale
        shift = self.shift.gather(2, self.perm).unsqueeze(-1)
        return moves, shift, 2.0 * self.weight, (2.0 * self.bias).unsqueeze(-1)

    def _conditioner(self, u_b: Tensor, weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
        h = torch.sigmoid(torch.baddbmm(bias, weight, u_b)) * 2.0 - 1.0  # == tanh(W u_b + b)
        return h.chunk(2, dim=1)

    def _latent_parts(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``x`` ``[K, N, d]`` → the last layer's ``(y_B, y_A)`` in its order, feature-major, and log|det J| ``[K, N]``."""
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(self.k, -1, -1)
        moves, shift, weight, bias = (p.unbind(1) for p in self._layer_params())
        logdet = self.log_scale.sum(dim=(1, 2)).unsqueeze(1)
        y = x.transpose(1, 2)
        for l in range(self.depth):
            u_b, u_a = torch.baddbmm(shift[l], moves[l], y).split([self.m, self.d - self.m], dim=1)
            s, t = self._conditioner(u_b, weight[l], bias[l])
            y_a = torch.addcmul(t, u_a, s.exp())
            logdet = logdet + s.sum(1)
            y = torch.cat([u_b, y_a], dim=1)
        return u_b, y_a, logdet

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Data to latent: ``x`` ``[K, N, d]`` (or ``[N, d]``, shared) → ``(z [K, N, d], log|det J| [K, N])``."""
        y_b, y_a, logdet = self._latent_parts(x)
        y = torch.cat([y_b, y_a], dim=1)
        last = self.perm[:, -1].unsqueeze(-1).expand(-1, -1, y.shape[-1])
        z = torch.zeros_like(y).scatter(1, last, y)  # back to the data's feature order
        return z.transpose(1, 2), logdet.expand(-1, z.shape[-1])

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Latent to data: ``z`` ``[K, N, d]`` → ``(x [K, N, d], log|det J^-1| [K, N])``."""
        moves, shift, weight, bias = (p.unbind(1) for p in self._layer_params())
        scale = self.log_scale.gather(2, self.perm).unsqueeze(-1).unbind(1)
        transition = self.transition.unbind(1)
        logdet = -self.log_scale.sum(dim=(1, 2)).unsqueeze(1)
        last = self.perm[:, -1].unsqueeze(-1).expand(-1, -1, z.shape[1])
        y = z.transpose(1, 2).gather(1, last)
        for l in reversed(range(self.depth)):
            y_b, y_a = y.split([self.m, self.d - self.m], dim=1)
            s, t = self._conditioner(y_b, weight[l], bias[l])
            u = torch.cat([y_b, (y_a - t) * (-s).exp()], dim=1)
            y = torch.bmm(transition[l].transpose(1, 2), (u - shift[l]) * (-scale[l]).exp())
            logdet = logdet - s.sum(1)
        return y.transpose(1, 2), logdet.expand(-1, z.shape[1])

    def log_prob(self, x: Tensor) -> Tensor:
        """Log-density in nats under each model: ``x`` ``[K, N, d]`` or ``[N, d]`` → ``[K, N]``."""
        # The prior is isotropic, so the latent's feature order does not matter here.
        y_b, y_a, logdet = self._latent_parts(x)
        return -0.5 * (y_b.square().sum(1) + y_a.square().sum(1) + self.d * LOG_2PI) + logdet

    @torch.no_grad()
    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> Tensor:
        """``n`` samples from each model: ``[K, n, d]``."""
        z = torch.randn(self.k, n, self.d, generator=generator).to(self.weight)
        return self.inverse(z)[0]
