"""A batch of K independent affine coupling flows, run as one vectorised model.

Every model ``k`` has its own structure and parameters; layer ``l`` of model ``k`` is
an affine constant transform followed by an affine coupling (the method's layer)::

    u = x * exp(a[k, l]) + c[k, l]
    (s, t) = tanh(W[k, l] u_B + b[k, l])            # u_B: the m conditioning features
    y_A = u_A * exp(s) + t,   y_B = u_B              # u_A: the d - m transformed ones

All parameters of model ``k`` are one row of a single ``[K, P]`` parameter, ``theta``, so
the optimizer, the freezing of diverged models and the gradient are one tensor each;
``log_scale``, ``shift``, ``weight`` and ``bias`` are named views into it. Weights are
compact: ``W[k, l]`` is ``2(d - m) x m``.

The log-density runs the fused kernel of :mod:`flowsweep.fused` (one autograd node with
a hand-written backward pass); the training step runs it too, or the C kernel of
:mod:`flowsweep.native` (the same model, about twice as fast per thread). :meth:`forward` and
:meth:`inverse` are written with plain PyTorch operations in the data's feature order:
an independent formulation that the tests hold the fused kernel against.

Model ``k`` only ever reads its own slice: its outputs and gradients are the ones it
would have alone.
"""

from __future__ import annotations

import math
import weakref
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from flowsweep.fused import LOG_2PI, FusedLogProb, ParamLayout, StructureIndex, Workspace, nll_step
from flowsweep.native import NativeStep
from flowsweep.structure import Structure

__all__ = ["BatchedCouplingFlow", "LOG_2PI"]


_moments: Optional[tuple[weakref.ref, int, Tensor, Tensor]] = None


def _column_moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation (floored at 1e-6) of the columns of ``x`` ``[N, d]``.

    The last result is kept while ``x`` lives unchanged: a structure search builds a
    data-initialised flow for every iteration, always from the same training rows.
    """
    global _moments
    if _moments is None or _moments[0]() is not x or _moments[1] != x._version:
        _moments = (weakref.ref(x), x._version, x.mean(0), x.std(0).clamp_min(1e-6))
    return _moments[2], _moments[3]


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
        self.layout = ParamLayout(self.depth, self.d, self.m)
        #: Every parameter of model k in row k: log_scale, shift, weight, bias (see ParamLayout).
        self.theta = nn.Parameter(torch.zeros(self.k, self.layout.numel))
        shape = (self.k, self.depth, self.d)
        self.register_buffer("perm", torch.zeros(shape, dtype=torch.long))
        self.register_buffer("inv_perm", torch.zeros(shape, dtype=torch.long))
        self.register_buffer("rows", torch.zeros(self.depth, self.k * self.d, dtype=torch.long))
        self.register_buffer("rows_back", torch.zeros(self.depth, self.k * self.d, dtype=torch.long))
        self.structures: list[Structure] = []
        #: Reused by every training step (see fused.Workspace).
        self._workspace: Optional[Workspace] = None
        self._native: Optional[NativeStep] = None
        self.set_structures(structures)
        for i in range(self.k):
            self.reset_parameters(i, None if generators is None else generators[i])

    # -- parameters as named views ----------------------------------------------------

    @property
    def log_scale(self) -> Tensor:
        """``[K, L, d]``, constant transforms' log-scales, indexed by original feature."""
        return self.layout.split(self.theta)[0]

    @property
    def shift(self) -> Tensor:
        """``[K, L, d]``, constant transforms' shifts, indexed by original feature."""
        return self.layout.split(self.theta)[1]

    @property
    def weight(self) -> Tensor:
        """``[K, L, 2(d - m), m]``: rows ``s`` then ``t`` of the transformed features (sorted),
        columns the conditioning features (sorted)."""
        return self.layout.split(self.theta)[2]

    @property
    def bias(self) -> Tensor:
        """``[K, L, 2(d - m)]``, the conditioners' biases."""
        return self.layout.split(self.theta)[3]

    @property
    def index(self) -> StructureIndex:
        return StructureIndex(self.perm, self.inv_perm, self.rows, self.rows_back)

    # -- structure and parameters -------------------------------------------------

    def set_structures(self, structures: Sequence[Structure]) -> None:
        """Replace every model's structure (parameters are left as they are)."""
        if len(structures) != self.k:
            raise ValueError(f"expected {self.k} structures, got {len(structures)}")
        for s in structures:
            if (s.d, s.m, s.depth) != (self.d, self.m, self.depth):
                raise ValueError(f"structure shape {(s.d, s.m, s.depth)} != flow shape {(self.d, self.m, self.depth)}")
        index = StructureIndex.from_perm(torch.stack([torch.from_numpy(s.permutation()) for s in structures]))
        for name in ("perm", "inv_perm", "rows", "rows_back"):
            getattr(self, name).copy_(getattr(index, name))
        self.structures = list(structures)
        self._workspace = None

    @torch.no_grad()
    def reset_parameters(self, model: int, generator: Optional[torch.Generator], layers: Optional[Sequence[int]] = None) -> None:
        """Fresh parameters for ``model`` (all layers, or only ``layers``).

        Constant transforms start as the identity; conditioner weights and biases are
        uniform in ``±1/sqrt(m)``, as ``nn.Linear`` initialises them.
        """
        index = list(range(self.depth)) if layers is None else list(layers)
        if not index:
            return
        log_scale, shift, weight, bias = self.layout.split(self.theta)
        bound = 1.0 / math.sqrt(self.m)
        w = torch.rand((len(index),) + tuple(weight.shape[2:]), generator=generator) * (2 * bound) - bound
        b = torch.rand((len(index),) + tuple(bias.shape[2:]), generator=generator) * (2 * bound) - bound
        if layers is None:  # plain copies: a flow is built for every search iteration
            self.theta[model].zero_()
            weight[model].copy_(w)
            bias[model].copy_(b)
            return
        weight[model, index] = w.to(weight)
        bias[model, index] = b.to(bias)
        log_scale[model, index] = 0.0
        shift[model, index] = 0.0

    @torch.no_grad()
    def copy_model(self, dst: int, source: BatchedCouplingFlow, src: int, layers: Optional[Sequence[int]] = None) -> None:
        """Copy the parameters of ``source``'s model ``src`` (all or some layers) into model ``dst``."""
        if layers is None:
            self.theta[dst] = source.theta[src]
            return
        index = list(layers)
        for mine, theirs in zip(self.layout.split(self.theta), source.layout.split(source.theta)):
            mine[dst, index] = theirs[src, index]

    @torch.no_grad()
    def initialize_from_data(self, x: Tensor) -> None:
        """Set the first constant transform of every model to standardise ``x`` ``[N, d]``.

        A data-dependent start (as ActNorm in Glow): the flow begins as the map to
        zero mean and unit variance, so plain SGD is well conditioned on raw units.
        """
        mean, std = _column_moments(x)
        self.log_scale[:, 0] = -std.log()
        self.shift[:, 0] = -mean / std

    def num_parameters(self) -> int:
        """Trainable parameters of one model."""
        return self.layout.numel

    def finite_models(self) -> Tensor:
        """Bool ``[K]``: ``True`` where every parameter of the model is finite."""
        return torch.isfinite(self.theta.detach()).all(1)

    # -- densities (fused kernel) ------------------------------------------------------

    def log_prob(self, x: Tensor) -> Tensor:
        """Log-density in nats under each model: ``x`` ``[K, N, d]`` or ``[N, d]`` → ``[K, N]``."""
        return FusedLogProb.apply(x, self.theta, self.layout, self.index, False)

    def nll(self, x: Tensor) -> Tensor:
        """Mean negative log-likelihood per model (nats): ``x`` ``[K, N, d]`` or ``[N, d]`` → ``[K]``.

        Equal to ``-log_prob(x).mean(1)``, with the reduction inside the fused kernel.
        """
        return FusedLogProb.apply(x, self.theta, self.layout, self.index, True)

    def native_step(self, data: Tensor, rows: Tensor, threads: int = 1) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
        """:meth:`nll_step` on the minibatches ``data[rows[k]]`` (``rows`` ``[K, N]``) with the C
        kernel of :mod:`flowsweep.native` (float32; see ``native_available``), its models
        split over ``threads`` threads."""
        if self._native is None or self._native.threads != threads:
            self._native = NativeStep(self.k, self.d, self.m, self.depth, self.layout.numel, threads)
        nll, grad = self._native(data, rows, self.theta, self.perm)
        return nll.clone(), lambda weight: grad * weight.to(grad.dtype).unsqueeze(1)

    def nll_step(self, x: Tensor) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
        """The training loop's path, without autograd: ``(nll [K], backward)``, where
        ``backward(weight [K])`` is the gradient of ``sum_k weight[k] * nll[k]`` for :attr:`theta`.

        The buffers are reused from step to step: call ``backward`` before the next ``nll_step``.
        """
        n = x.shape[-2]
        if self._workspace is None or self._workspace.shape != (self.k, n) or self._workspace.y.dtype != x.dtype:
            self._workspace = Workspace(self.theta, self.layout, self.k, n)
        return nll_step(x, self.theta, self.layout, self.index, self._workspace)

    # -- transforms (plain operations, data order) -------------------------------------

    def _conditioner(self, u_b: Tensor, layer: int) -> tuple[Tensor, Tensor]:
        """``u_b`` ``[K, N, m]`` → ``(s, t)``, each ``[K, N, d - m]``."""
        h = torch.tanh(torch.baddbmm(self.bias[:, layer].unsqueeze(1), u_b, self.weight[:, layer].transpose(1, 2)))
        return h.split(self.d - self.m, dim=2)

    def _split_index(self, layer: int, n: int) -> tuple[Tensor, Tensor]:
        order = self.perm[:, layer].unsqueeze(1)
        return order[..., : self.m].expand(-1, n, -1), order[..., self.m :].expand(-1, n, -1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Data to latent: ``x`` ``[K, N, d]`` (or ``[N, d]``, shared) → ``(z [K, N, d], log|det J| [K, N])``."""
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(self.k, -1, -1)
        logdet = self.log_scale.sum(dim=(1, 2)).unsqueeze(1).expand(-1, x.shape[1])
        for l in range(self.depth):
            u = torch.addcmul(self.shift[:, l].unsqueeze(1), x, self.log_scale[:, l].exp().unsqueeze(1))
            cond, trans = self._split_index(l, x.shape[1])
            s, t = self._conditioner(u.gather(2, cond), l)
            x = u.scatter(2, trans, u.gather(2, trans) * s.exp() + t)
            logdet = logdet + s.sum(2)
        return x, logdet

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Latent to data: ``z`` ``[K, N, d]`` → ``(x [K, N, d], log|det J^-1| [K, N])``."""
        logdet = -self.log_scale.sum(dim=(1, 2)).unsqueeze(1).expand(-1, z.shape[1])
        for l in reversed(range(self.depth)):
            cond, trans = self._split_index(l, z.shape[1])
            s, t = self._conditioner(z.gather(2, cond), l)
            u = z.scatter(2, trans, (z.gather(2, trans) - t) * (-s).exp())
            z = (u - self.shift[:, l].unsqueeze(1)) * (-self.log_scale[:, l]).exp().unsqueeze(1)
            logdet = logdet - s.sum(2)
        return z, logdet

    @torch.no_grad()
    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> Tensor:
        """``n`` samples from each model: ``[K, n, d]``."""
        z = torch.randn(self.k, n, self.d, generator=generator).to(self.theta)
        return self.inverse(z)[0]
