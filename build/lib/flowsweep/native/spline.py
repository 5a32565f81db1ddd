"""The fused rational-quadratic spline (``rq_spline.c``) as an autograd function.

:func:`native_spline` computes :func:`flowsweep.model.spline.rational_quadratic_spline`'s
forward map (data to latent) and log-determinant in one pass over the elements, and its
gradient with respect to the inputs and the unconstrained parameters in another, by hand
(the C file has the chain rule). The training loop installs it for the reference model's
spline couplings with :func:`flowsweep.model.spline.spline_kernel` where ``train.kernel`` is
``native``; the tests hold it to the reference and its autograd gradient.
"""

from __future__ import annotations

import ctypes
from functools import lru_cache
from typing import Any, Optional

import torch
from torch import Tensor

from flowsweep.model.spline import DERIVATIVE_OFFSET, MIN_BIN_WIDTH, MIN_DERIVATIVE
from flowsweep.native import _in_threads, _split, load_library, native_available

__all__ = ["native_spline", "max_bins"]

#: Elements per thread below which one thread does it all (a hand-over costs about as much).
_PER_THREAD = 16_384


class _Constants(ctypes.Structure):
    _fields_ = [("bins", ctypes.c_int), ("bound", ctypes.c_float), ("min_share", ctypes.c_float),
                ("min_derivative", ctypes.c_float), ("offset", ctypes.c_float)]


@lru_cache(maxsize=1)
def max_bins() -> int:
    """The most bins the kernel takes (its per-element arrays are on the stack)."""
    return int(load_library().rq_spline_max_bins())


def _ranges(n: int) -> list[tuple[int, int]]:
    return _split(n, max(1, min(torch.get_num_threads(), n // _PER_THREAD)))


class _FusedSpline(torch.autograd.Function):
    """``(x [...], phi [..., 3 bins - 1]) -> (y [...], logabsdet [...])``, float32, contiguous."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, phi: Tensor, bins: int, bound: float) -> tuple[Tensor, Tensor]:
        x, phi = x.contiguous(), phi.contiguous()
        constants = _Constants(bins, bound, MIN_BIN_WIDTH, MIN_DERIVATIVE, DERIVATIVE_OFFSET)
        y, lad = torch.empty_like(x), torch.empty_like(x)
        pointers = [ctypes.addressof(constants)] + [t.data_ptr() for t in (x, phi, y, lad)]
        library = load_library()
        _in_threads(lambda r: library.rq_spline_forward(*r, *pointers), _ranges(x.numel()))
        ctx.save_for_backward(x, phi)
        ctx.constants = constants
        return y, lad

    @staticmethod
    def backward(ctx: Any, grad_y: Optional[Tensor], grad_lad: Optional[Tensor]) -> tuple[Any, ...]:
        x, phi = ctx.saved_tensors
        grad_y = torch.zeros_like(x) if grad_y is None else grad_y.contiguous()
        grad_lad = torch.zeros_like(x) if grad_lad is None else grad_lad.contiguous()
        grad_x, grad_phi = torch.empty_like(x), torch.empty_like(phi)
        pointers = [ctypes.addressof(ctx.constants)] + [t.data_ptr() for t in (x, phi, grad_y, grad_lad, grad_x,
                                                                                  grad_phi)]
        library = load_library()
        _in_threads(lambda r: library.rq_spline_backward(*r, *pointers), _ranges(x.numel()))
        return grad_x, grad_phi, None, None


def native_spline(x: Tensor, phi: Tensor, bins: int, bound: float) -> Optional[tuple[Tensor, Tensor]]:
    """The spline of every element of ``x`` ``[...]`` with unconstrained parameters ``phi``
    ``[..., 3 bins - 1]`` (widths, heights, inner derivatives), data to latent: ``(y [...],
    log|dy/dx| [...])``, differentiable; ``None`` where the kernel does not apply (not float32
    on the CPU, more than :func:`max_bins` bins, or no C compiler), for the caller's fallback."""
    if (x.dtype != torch.float32 or phi.dtype != torch.float32 or x.device.type != "cpu"
            or phi.device.type != "cpu" or not native_available() or bins > max_bins()):
        return None
    y, lad = _FusedSpline.apply(x, phi, bins, bound)
    return y, lad
