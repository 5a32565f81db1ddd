"""The log-density of K coupling flows with a hand-written, fused forward and backward.

Small flows on a CPU are bound by per-operation overhead and memory passes, not by
arithmetic. :class:`FusedLogProb` is one ``torch.autograd.Function`` (one autograd node)
that runs eight batched operations per layer forward and a dozen backward, into buffers
of a :class:`Workspace`, and returns the gradient of all parameters as one flat tensor;
:func:`nll_step` is the same pair of passes for the training loop, without autograd.

Shapes: ``K`` models, ``L`` layers, ``d`` features of which ``m`` condition and
``dm = d - m`` are transformed, ``N`` samples. Activations are feature-major,
``[K, d, N]``, with each layer's rows in that layer's order (conditioning features
first), so the split into conditioning and transformed rows is a view. Per layer ``l``
(``P_l`` the row permutation from the previous layer's order, ``e = exp(log_scale)`` and
``c = shift`` in layer order)::

    v   = e * P_l y + c                    # affine constant transform
    T   = tanh(W v[:m] + b)                # = 2 sigmoid(2 W v[:m] + 2 b) - 1, rows s then t
    y'  = [v[:m], v[m:] * exp(s) + t]      # affine coupling, written in place over v[m:]

``tanh`` is computed as ``2 sigmoid(2x) - 1``: PyTorch's CPU ``sigmoid`` is about twice as
fast as its ``tanh``. Moving to a layer's order is one row gather (``index_select``) on
the ``[K d, N]`` view. The backward pass needs no copy of ``v[m:]``:
``v[m:] * exp(s) = y'[m:] - t``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["ParamLayout", "StructureIndex", "Workspace", "FusedLogProb", "nll_step", "LOG_2PI"]

LOG_2PI = math.log(2.0 * math.pi)
#: From this many activations per layer (K d N) on, the backward pass works layer by
#: layer so that its intermediates stay in cache (on the 2-core box: magic's 20 x 10 x 380
#: is well above, sonar's 20 x 60 x 16 and yeast's 20 x 8 x 29 are below).
_HOT_LOOP = 32_768


@dataclass(frozen=True)
class ParamLayout:
    """Where each parameter of one model lives in its flat row of ``P`` numbers.

    Per model: ``log_scale [L, d]``, ``shift [L, d]`` (indexed by original feature),
    ``weight [L, 2 dm, m]`` (rows ``s`` then ``t`` of the transformed features in sorted
    order; columns the conditioning features in sorted order), ``bias [L, 2 dm]``.
    """

    depth: int
    d: int
    m: int

    @property
    def sizes(self) -> tuple[int, int, int, int]:
        L, d, dm = self.depth, self.d, self.d - self.m
        return L * d, L * d, L * 2 * dm * self.m, L * 2 * dm

    @property
    def numel(self) -> int:
        """``P``, the number of parameters of one model."""
        return sum(self.sizes)

    def split(self, flat: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``flat`` ``[K, P]`` → views ``log_scale [K, L, d]``, ``shift [K, L, d]``,
        ``weight [K, L, 2 dm, m]``, ``bias [K, L, 2 dm]``."""
        k, L, d, dm = flat.shape[0], self.depth, self.d, self.d - self.m
        a, c, w, b = flat.split(self.sizes, dim=1)
        return a.view(k, L, d), c.view(k, L, d), w.view(k, L, 2 * dm, self.m), b.view(k, L, 2 * dm)


@dataclass(frozen=True)
class StructureIndex:
    """Index tensors derived from the K structures (all ``int64``).

    Attributes:
        perm: ``[K, L, d]``, layer order: position ``j`` of layer ``l`` holds feature ``perm[k, l, j]``.
        inv_perm: ``[K, L, d]``, the position of feature ``i`` in layer ``l``'s order.
        rows: ``[L, K d]``, the rows of the previous layer's ``[K d, N]`` activations (the
            data's for layer 0) that make up layer ``l``'s rows, in order.
        rows_back: ``[L, K d]``, the inverse gather, for the backward pass.
    """

    perm: Tensor
    inv_perm: Tensor
    rows: Tensor
    rows_back: Tensor

    @classmethod
    def from_perm(cls, perm: Tensor) -> StructureIndex:
        k, depth, d = perm.shape
        inv_perm = torch.argsort(perm, dim=2)
        before = torch.cat([torch.arange(d).expand(k, 1, d), inv_perm[:, :-1]], dim=1)  # the data's order first
        source = before.gather(2, perm)  # [K, L, d]: where each row of layer l sits in the previous order
        offset = (torch.arange(k) * d).view(k, 1, 1)
        rows = (source + offset).transpose(0, 1).reshape(depth, k * d)
        rows_back = (torch.argsort(source, dim=2) + offset).transpose(0, 1).reshape(depth, k * d)
        return cls(perm, inv_perm, rows, rows_back)


def _prepare(theta: Tensor, layout: ParamLayout, index: StructureIndex) -> tuple[Tensor, ...]:
    """Per-layer parameters in layer order, layer-major: the constant transform's scale and
    shift ``e, c [L, K d, 1]``, the conditioner's ``w2 [L, K, 2dm, m]`` and ``b2 [L, K, 2dm, 1]``
    (doubled for the sigmoid form)."""
    log_scale, shift, weight, bias = layout.split(theta)
    k, L, d = log_scale.shape
    e = log_scale.gather(2, index.perm).exp_().transpose(0, 1).reshape(L, k * d, 1)
    c = shift.gather(2, index.perm).transpose(0, 1).reshape(L, k * d, 1)
    w2 = torch.mul(weight.transpose(0, 1), 2.0, out=theta.new_empty(L, k, *weight.shape[2:]))
    b2 = torch.mul(bias.transpose(0, 1), 2.0, out=theta.new_empty(L, k, bias.shape[2])).unsqueeze(-1)
    return e, c, w2, b2


class Workspace:
    """Buffers and per-layer views for ``K`` models and ``N`` samples.

    Made once, the views spare every step ~30 ``unbind`` calls, which cost more than the
    arithmetic when N is small. Training reuses one workspace for all its steps (each
    step's backward pass runs before the next step's forward pass); a workspace
    without ``keep`` holds two activation slots that take turns (no backward pass).
    """

    def __init__(self, theta: Tensor, layout: ParamLayout, k: int, n: int, keep: bool = True):
        L, d, m = layout.depth, layout.d, layout.m
        dm = d - m
        self.shape, self.keep = (k, n), keep
        self.slots = L if keep else 2
        self.y = theta.new_empty(self.slots, k, d, n)
        self.t = theta.new_empty(L if keep else 1, k, 2 * dm, n)
        self.ex = theta.new_empty(L if keep else 1, k, dm, n)
        self.ys, self.ys_flat = self.y.unbind(0), self.y.view(self.slots, k * d, n).unbind(0)
        self.ys_b, self.ys_a = self.y[:, :, :m].unbind(0), self.y[:, :, m:].unbind(0)
        self.ts, self.ts_s, self.ts_t = self.t.unbind(0), self.t[:, :, :dm].unbind(0), self.t[:, :, dm:].unbind(0)
        self.es = self.ex.unbind(0)
        self.minus_one, self.one = theta.new_full((), -1.0), theta.new_ones(())
        self.hot = k * d * n >= _HOT_LOOP
        if keep:
            self._backward_buffers(theta, layout, k, n)

    def _backward_buffers(self, theta: Tensor, layout: ParamLayout, k: int, n: int) -> None:
        """Large batches go layer by layer (one slot, reused while in cache); small ones keep
        every layer's intermediates for reductions over all layers at once."""
        L, d, m = layout.depth, layout.d, layout.m
        dm = d - m
        slots = 1 if self.hot else L
        self.deriv = theta.new_empty(slots, k, 2 * dm, n)  # tanh' = 1 - T^2
        self.scaled = theta.new_empty(slots, k, dm, n)  # v[m:] * exp(s) = y'[m:] - t
        self.g_pre = theta.new_empty(slots, k, dm, n)  # d/ds before tanh', with the log-det term
        self.g_h = theta.new_empty(slots, k, 2 * dm, n)  # d/d(W v + b)
        self.g_v = theta.new_empty(slots, k, d, n)  # d/dv
        # per layer, summed over samples: d/dW, d/db, d/dc, sum g_v v (conditioning rows), sum g_pre
        self.g_w = theta.new_empty(L, k, 2 * dm, m)
        sums = theta.new_empty(L, k, 2 * dm + d + m + dm)
        self.g_b, self.g_c, self.dot_b, self.sum_pre = sums.split([2 * dm, d, m, dm], dim=2)
        self.derivs, self.scaleds = self.deriv.unbind(0), self.scaled.unbind(0)
        self.g_pres, self.g_hs = self.g_pre.unbind(0), self.g_h.unbind(0)
        self.g_hs_s, self.g_hs_t = self.g_h[:, :, :dm].unbind(0), self.g_h[:, :, dm:].unbind(0)
        self.g_vs, self.g_vs_flat = self.g_v.unbind(0), self.g_v.view(slots, k * d, n).unbind(0)
        self.g_vs_b, self.g_vs_a = self.g_v[:, :, :m].unbind(0), self.g_v[:, :, m:].unbind(0)
        self.ts_all, self.v_bs = self.t.unbind(0), self.y[:, :, :m].unbind(0)  # conditioning rows stay as v


def _forward(x: Tensor, theta: Tensor, layout: ParamLayout, index: StructureIndex, keep: bool,
             ws: Optional[Workspace] = None):
    """Latent rows ``[K, d, N]`` (last layer's order), coupling log-dets ``[K, N]`` and, if
    ``keep``, what the backward pass reads."""
    k, L, d = theta.shape[0], layout.depth, layout.d
    dm = d - layout.m
    prepared = _prepare(theta, layout, index)
    e, c, w2, b2 = (p.unbind(0) for p in prepared)
    if x.dim() == 2:
        x = x.unsqueeze(0).expand(k, -1, -1)
    n = x.shape[1]
    ws = ws or Workspace(theta, layout, k, n, keep)
    rows, slots = index.rows.unbind(0), ws.slots
    logdet = None if keep else theta.new_zeros(k, n)
    rows_in = x.transpose(1, 2).reshape(k * d, n)  # feature-major: one copy
    for l in range(L):
        i, j = l % slots, (l if keep else 0)
        torch.index_select(rows_in, 0, rows[l], out=ws.ys_flat[i])  # into layer l's order
        ws.ys_flat[i].mul_(e[l]).add_(c[l])
        torch.baddbmm(b2[l], w2[l], ws.ys_b[i], out=ws.ts[j])
        ws.ts[j].sigmoid_()
        torch.add(ws.minus_one, ws.ts[j], alpha=2.0, out=ws.ts[j])  # 2 sigmoid(2x) - 1 == tanh(x)
        torch.exp(ws.ts_s[j], out=ws.es[j])
        torch.addcmul(ws.ts_t[j], ws.ys_a[i], ws.es[j], out=ws.ys_a[i])
        if not keep:
            logdet += ws.ts_s[j].sum(1)
        rows_in = ws.ys_flat[i]
    if keep:
        logdet = ws.t[:, :, :dm].sum(2).sum(0)
    return ws.ys[(L - 1) % slots], logdet, (ws, *prepared[:3])


def _log_density(z: Tensor, logdet: Tensor, theta: Tensor, layout: ParamLayout) -> Tensor:
    """``log N(z; 0, I) + log|det J|`` ``[K, N]`` from feature-major ``z`` ``[K, d, N]``."""
    constant = layout.split(theta)[0].sum(dim=(1, 2)) - 0.5 * layout.d * LOG_2PI  # constant transforms' log-dets
    return logdet.add_(constant.unsqueeze(1)).sub_(z.square().sum(1), alpha=0.5)


def _backward(grad: Tensor, saved: tuple, theta: Tensor, layout: ParamLayout, index: StructureIndex,
              x_shape: Optional[torch.Size]) -> tuple[Optional[Tensor], Tensor]:
    """Gradients of ``sum(grad * log_density)`` for ``theta`` ``[K, P]`` and, if ``x_shape``, ``x``.

    ``grad`` is ``[K, N]`` or ``[K, 1]`` (the same weight for every sample). Large batches
    go layer by layer, every intermediate used while it is in cache and reduced at once;
    small ones (where the number of operations decides) do the element-wise work and the
    reductions of all layers in one operation each.
    """
    ws, e, c, w2 = saved
    y, t, ex = ws.y, ws.t, ws.ex
    L, k, d, n = y.shape
    m, dm = layout.m, layout.d - layout.m
    hot = ws.hot
    gw = grad.unsqueeze(1)  # [K, 1, N|1]: d(loss)/d(log-density) per sample
    if not hot:
        torch.addcmul(ws.one, t, t, value=-1.0, out=ws.deriv)
        torch.sub(y[:, :, m:], t[:, :, dm:], out=ws.scaled)
    ex, e, w2_t, rows_back = ex.unbind(0), e.unbind(0), w2.transpose(2, 3).unbind(0), index.rows_back.unbind(0)
    g_y = torch.mul(y[L - 1], gw).neg_()  # d/dz of -|z|^2 / 2
    for l in reversed(range(L)):
        j = 0 if hot else l
        g_ya, g_yb = g_y[:, m:], g_y[:, :m]
        if hot:
            torch.addcmul(ws.one, ws.ts_all[l], ws.ts_all[l], value=-1.0, out=ws.derivs[0])
            torch.sub(ws.ys_a[l], ws.ts_t[l], out=ws.scaleds[0])
        torch.addcmul(gw, g_ya, ws.scaleds[j], out=ws.g_pres[j])
        torch.mul(ws.g_pres[j], ws.derivs[j][:, :dm], out=ws.g_hs_s[j])
        torch.mul(g_ya, ws.derivs[j][:, dm:], out=ws.g_hs_t[j])
        torch.mul(g_ya, ex[l], out=ws.g_vs_a[j])
        # into a contiguous result first: bmm into a strided slice takes a slow per-matrix path
        ws.g_vs_b[j].copy_(torch.baddbmm(g_yb, w2_t[l], ws.g_hs[j], alpha=0.5))
        if hot:
            torch.bmm(ws.g_hs[0], ws.v_bs[l].transpose(1, 2), out=ws.g_w[l])
            torch.sum(ws.g_hs[0], 2, out=ws.g_b[l])
            torch.sum(ws.g_vs[0], 2, out=ws.g_c[l])
            torch.sum(ws.g_vs_b[0] * ws.v_bs[l], 2, out=ws.dot_b[l])
            torch.sum(ws.g_pres[0], 2, out=ws.sum_pre[l])
        if l > 0 or x_shape is not None:
            g_y = torch.mul(ws.g_vs_flat[j], e[l]).index_select(0, rows_back[l]).view(k, d, n)
    if not hot:
        torch.bmm(ws.g_h.view(L * k, 2 * dm, n), y[:, :, :m].reshape(L * k, m, n).transpose(1, 2),
                  out=ws.g_w.view(L * k, 2 * dm, m))
        torch.sum(ws.g_h, 3, out=ws.g_b)
        torch.sum(ws.g_v, 3, out=ws.g_c)
        torch.sum(ws.g_v[:, :, :m] * y[:, :, :m], 3, out=ws.dot_b)
        torch.sum(ws.g_pre, 3, out=ws.sum_pre)
    g_w, g_b, g_c, dot_b, sum_pre = ws.g_w, ws.g_b, ws.g_c, ws.dot_b, ws.sum_pre

    g_theta = torch.empty_like(theta)
    g_log_scale, g_shift, g_weight, g_bias = layout.split(g_theta)
    g_weight.copy_(g_w.transpose(0, 1))
    g_bias.copy_(g_b.transpose(0, 1))
    per_model = gw.sum(2) if gw.shape[2] == n else gw.squeeze(2) * n  # [K, 1]: sum of the weights
    # d/d(log scale) = sum_n g_v (v - c); on transformed rows sum_n g_v v = sum_n g_pre - sum_n gw
    g_loge = torch.cat([dot_b, sum_pre - per_model], dim=2)
    g_loge.sub_(c.view(L, k, d) * g_c)
    torch.gather(g_loge.transpose(0, 1), 2, index.inv_perm, out=g_log_scale)
    g_log_scale.add_(per_model.unsqueeze(2))  # the constant transforms' own log-dets
    torch.gather(g_c.transpose(0, 1), 2, index.inv_perm, out=g_shift)

    g_x = None
    if x_shape is not None:
        g_x = g_y.transpose(1, 2)
        if len(x_shape) == 2:
            g_x = g_x.sum(0)
    return g_x, g_theta


class FusedLogProb(torch.autograd.Function):
    """``log p_k(x)`` for every model: ``[K, N]``, or with ``mean_nll`` the per-model mean
    negative log-likelihood ``[K]``; differentiable in ``x`` and ``theta``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, theta: Tensor, layout: ParamLayout, index: StructureIndex,
                mean_nll: bool) -> Tensor:
        keep = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        z, logdet, saved = _forward(x, theta, layout, index, keep)
        density = _log_density(z, logdet, theta, layout)
        if keep:
            ctx.layout, ctx.index, ctx.mean_nll = layout, index, mean_nll
            ctx.x_shape = x.shape if ctx.needs_input_grad[0] else None
            ctx.n = density.shape[1]
            ctx.workspace = saved[0]  # buffers made for this call alone
            ctx.save_for_backward(theta, *saved[1:])
        return density.mean(1).neg_() if mean_nll else density

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Optional[Tensor], ...]:
        theta, *prepared = ctx.saved_tensors
        saved = (ctx.workspace, *prepared)
        grad = grad.unsqueeze(1) / -ctx.n if ctx.mean_nll else grad
        g_x, g_theta = _backward(grad, saved, theta, ctx.layout, ctx.index, ctx.x_shape)
        return g_x, g_theta, None, None, None


def nll_step(x: Tensor, theta: Tensor, layout: ParamLayout, index: StructureIndex,
             ws: Optional[Workspace] = None) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
    """The training path without autograd: per-model mean NLL ``[K]`` and its backward pass.

    Returns ``(nll, backward)``; ``backward(weight)`` with ``weight`` ``[K]`` (bool or float)
    is the gradient of ``sum_k weight[k] * nll[k]`` for ``theta``, ``[K, P]``. With a
    workspace, call ``backward`` before the workspace's next forward pass.
    """
    theta = theta.detach()
    z, logdet, saved = _forward(x, theta, layout, index, keep=True, ws=ws)
    nll = _log_density(z, logdet, theta, layout).mean(1).neg_()

    def backward(weight: Tensor) -> Tensor:
        grad = weight.to(theta.dtype).mul(-1.0 / z.shape[2]).unsqueeze(1)  # d/d(log-density), [K, 1]
        return _backward(grad, saved, theta, layout, index, None)[1]

    return nll, backward
