"""A batch of K independent affine coupling flows, run as one vectorised model.

Every model ``k`` has its own structure and parameters; layer ``l`` of model ``k`` is
an affine constant transform followed by an affine coupling (the method's layer)::

    u = x * exp(a[k, l]) + c[k, l]
    (s, t) = tanh(u_B @ W[k, l] + b[k, l])          # u_B: the m conditioning features
    y_A = u_A * exp(s) + t,   y_B = u_B              # u_A: the d - m transformed ones

Weights are stored compactly (``W[k, l]`` is ``m x 2(d - m)``), and the split into
conditioning and transformed features is an index gather with per-model indices, so K models cost one chain of batched kernels instead of K chains.
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
        self.log_scale = nn.Parameter(torch.zeros(k, depth, d))
        self.shift = nn.Parameter(torch.zeros(k, depth, d))
        # Conditioner of layer l: [s; t] = tanh(u_B @ weight[k, l, i] + bias[k, l, i]), i = 0 (s), 1 (t).
        self.weight = nn.Parameter(torch.zeros(k, depth, 2, m, d - m))
        self.bias = nn.Parameter(torch.zeros(k, depth, 2, d - m))
        self.register_buffer("cond_index", torch.zeros(k, depth, m, dtype=torch.long))
        self.register_buffer("moved_index", torch.zeros(k, depth, d - m, dtype=torch.long))
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
        perm = torch.stack([torch.from_numpy(s.permutation()) for s in structures]).to(self.cond_index.device)
        self.cond_index.copy_(perm[..., : self.m])
        self.moved_index.copy_(perm[..., self.m :])
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
        ok = torch.ones(self.k, dtype=torch.bool, device=self.cond_index.device)
        for p in self.parameters():
            ok &= torch.isfinite(p.detach()).flatten(1).all(1)
        return ok

    # -- transforms -----------------------------------------------------------------

    def _index(self, which: Tensor, layer: int, n: int) -> Tensor:
        return which[:, layer].unsqueeze(1).expand(-1, n, -1)

    def _conditioner(self, u_b: Tensor, layer: int) -> tuple[Tensor, Tensor]:
        # s and t come from separate batched matmuls so both are contiguous: strided
        # elementwise kernels are several times slower on CPU at these sizes.
        s = torch.tanh(torch.baddbmm(self.bias[:, layer, 0].unsqueeze(1), u_b, self.weight[:, layer, 0]))
        t = torch.tanh(torch.baddbmm(self.bias[:, layer, 1].unsqueeze(1), u_b, self.weight[:, layer, 1]))
        return s, t

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Data to latent: ``x`` ``[K, N, d]`` (or ``[N, d]``, shared) → ``(z [K, N, d], log|det J| [K, N])``."""
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(self.k, -1, -1)
        n = x.shape[1]
        logdet = self.log_scale.sum(dim=(1, 2)).unsqueeze(1)
        for l in range(self.depth):
            u = torch.addcmul(self.shift[:, l].unsqueeze(1), x, self.log_scale[:, l].exp().unsqueeze(1))
            cond, moved = self._index(self.cond_index, l, n), self._index(self.moved_index, l, n)
            s, t = self._conditioner(u.gather(-1, cond), l)
            x = u.scatter(-1, moved, torch.addcmul(t, u.gather(-1, moved), s.exp()))
            logdet = logdet + s.sum(-1)
        return x, logdet.expand(-1, n)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Latent to data: ``z`` ``[K, N, d]`` → ``(x [K, N, d], log|det J^-1| [K, N])``."""
        n = z.shape[1]
        logdet = -self.log_scale.sum(dim=(1, 2)).unsqueeze(1)
        y = z
        for l in reversed(range(self.depth)):
            cond, moved = self._index(self.cond_index, l, n), self._index(self.moved_index, l, n)
            s, t = self._conditioner(y.gather(-1, cond), l)
            u = y.scatter(-1, moved, (y.gather(-1, moved) - t) * (-s).exp())
            y = (u - self.shift[:, l].unsqueeze(1)) * (-self.log_scale[:, l]).exp().unsqueeze(1)
            logdet = logdet - s.sum(-1)
        return y, logdet.expand(-1, n)

    def log_prob(self, x: Tensor) -> Tensor:
        """Log-density in nats under each model: ``x`` ``[K, N, d]`` or ``[N, d]`` → ``[K, N]``."""
        z, logdet = self(x)
        return -0.5 * (z.square().sum(-1) + self.d * LOG_2PI) + logdet

    @torch.no_grad()
    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> Tensor:
        """``n`` samples from each model: ``[K, n, d]``."""
        z = torch.randn(self.k, n, self.d, generator=generator).to(self.weight)
        return self.inverse(z)[0]
