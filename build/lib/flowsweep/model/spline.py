"""The monotonic rational-quadratic spline of Durkan et al. (2019), "Neural Spline Flows".

One spline per element: ``bins`` bins between ``bins + 1`` knots on ``[-B, B]`` in both
the input and the output, whose widths and heights come from a softmax of unconstrained
values (each at least :data:`MIN_BIN_WIDTH`, :data:`MIN_BIN_HEIGHT`), and positive knot
derivatives; the outer two are 1, so the spline meets the identity ("linear tails")
outside ``[-B, B]`` with a continuous derivative. This is nflows'
``unconstrained_rational_quadratic_spline`` with ``tails="linear"``, with one choice of
ours: the inner derivatives are ``MIN_DERIVATIVE + softplus(u + c)`` with the offset ``c``
nflows gives the outer ones, so unconstrained values of zero give equal bins and unit
derivatives, the identity — a conditioner that starts at zero starts the flow as the
identity, as with the affine coupling. Inverse and log-determinant are closed-form
(Durkan et al., eqs. 4-8); autograd differentiates it all.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["MIN_BIN_WIDTH", "MIN_BIN_HEIGHT", "MIN_DERIVATIVE", "DERIVATIVE_OFFSET", "rational_quadratic_spline",
           "spline", "spline_kernel", "SplineKernel"]

#: The least width and height of a bin, as shares of ``2 B``.
MIN_BIN_WIDTH = MIN_BIN_HEIGHT = 1e-3
MIN_DERIVATIVE = 1e-3
#: ``softplus(DERIVATIVE_OFFSET) + MIN_DERIVATIVE == 1``: the outer knots' derivative, and the inner ones' at zero.
DERIVATIVE_OFFSET = math.log(math.expm1(1.0 - MIN_DERIVATIVE))

#: A faster forward spline (data to latent): ``kernel(x, phi, bins, bound)`` with ``phi``
#: ``[..., 3 bins - 1]`` returns ``(y, logabsdet)`` like :func:`rational_quadratic_spline`, or
#: ``None`` where it does not apply. :func:`flowsweep.native.spline.native_spline` is one.
SplineKernel = Callable[[Tensor, Tensor, int, float], Optional[tuple[Tensor, Tensor]]]
# A context variable, not a module global: the training loop installs the native kernel for
# the block it runs (train.kernel=native) and the reference stays the reference elsewhere.
_KERNEL: ContextVar[Optional[SplineKernel]] = ContextVar("flowsweep_spline_kernel", default=None)


def _knots(unnormalized: Tensor, bound: float, minimum: float) -> tuple[Tensor, Tensor]:
    """Knot positions ``[..., bins + 1]`` from ``-bound`` to ``bound`` and bin sizes ``[..., bins]``."""
    bins = unnormalized.shape[-1]
    # softmax by hand: torch.softmax over a short, strided last axis is several times slower
    e = (unnormalized - unnormalized.amax(-1, keepdim=True)).exp()
    sizes = minimum + (1.0 - minimum * bins) * (e / e.sum(-1, keepdim=True))
    inner = torch.cumsum(sizes[..., :-1], dim=-1) * (2.0 * bound) - bound
    # The ends exactly at ±bound, whatever the cumulative sum rounds to (as nflows).
    ends = torch.full_like(inner[..., :1], bound)
    knots = torch.cat([-ends, inner, ends], dim=-1)
    return knots, knots[..., 1:] - knots[..., :-1]


def rational_quadratic_spline(x: Tensor, widths: Tensor, heights: Tensor, derivatives: Tensor, bound: float,
                              inverse: bool = False) -> tuple[Tensor, Tensor]:
    """The spline of every element of ``x`` ``[...]``, or its inverse.

    Arguments:
        x: Inputs (outputs of the spline when ``inverse``), any shape ``[...]``.
        widths, heights: Unconstrained bin widths and heights, ``[..., bins]``.
        derivatives: Unconstrained inner knot derivatives, ``[..., bins - 1]``.
        bound: ``B``: the spline maps ``[-B, B]`` onto itself; the identity outside.

    Returns:
        ``y`` ``[...]`` and the elementwise ``log|dy/dx|`` ``[...]`` (of the inverse map when ``inverse``).
    """
    inside = (x >= -bound) & (x <= bound)
    # The spline is evaluated at the clamped input, so the outside elements (the identity)
    # never see a bin they are not in, and their gradient through the spline is exactly zero.
    xin = x.clamp(-bound, bound)
    knots, sizes = _knots(torch.stack([widths, heights], dim=-2), bound, MIN_BIN_WIDTH)  # [..., 2, bins (+1)]
    d = F.pad(MIN_DERIVATIVE + F.softplus(derivatives + DERIVATIVE_OFFSET), (1, 1), value=1.0)  # [..., bins + 1]
    search = knots[..., 1 if inverse else 0, 1:-1]
    index = (xin.unsqueeze(-1) >= search).sum(-1, keepdim=True)  # the bin, 0..bins-1
    # Every per-bin quantity in one table, so one gather (and one backward scatter) picks the bin's.
    table = torch.cat([knots[..., :-1], sizes, torch.stack([d[..., :-1], d[..., 1:]], dim=-2)], dim=-2)
    x0, y0, w, h, d0, d1 = table.gather(-1, index.unsqueeze(-2).expand(*table.shape[:-1], 1)).squeeze(-1).unbind(-1)
    s = h / w
    curvature = d0 + d1 - 2.0 * s
    if inverse:
        dy = xin - y0
        a = h * (s - d0) + dy * curvature
        b = h * d0 - dy * curvature
        c = -s * dy
        root = (b.square() - 4.0 * a * c).clamp(min=0.0).sqrt()
        theta = (2.0 * c) / (-b - root)  # the stable root, in [0, 1]
        y = theta * w + x0
    else:
        theta = (xin - x0) / w
    between = theta * (1.0 - theta)
    denominator = s + curvature * between
    slope = s.square() * (d1 * theta.square() + 2.0 * s * between + d0 * (1.0 - theta).square())
    logabsdet = slope.log() - 2.0 * denominator.log()
    if not inverse:
        y = y0 + h * (s * theta.square() + d0 * between) / denominator
    else:
        logabsdet = -logabsdet
    return torch.where(inside, y, x), torch.where(inside, logabsdet, torch.zeros_like(logabsdet))


@contextmanager
def spline_kernel(kernel: Optional[SplineKernel]) -> Iterator[None]:
    """Inside the block, :func:`spline` computes the forward direction with ``kernel`` where it
    applies (``None``: the reference everywhere)."""
    token = _KERNEL.set(kernel)
    try:
        yield
    finally:
        _KERNEL.reset(token)


def spline(x: Tensor, phi: Tensor, bins: int, bound: float, inverse: bool = False) -> tuple[Tensor, Tensor]:
    """:func:`rational_quadratic_spline` of ``x`` ``[...]`` with its parameters in one tensor,
    ``phi`` ``[..., 3 bins - 1]`` (widths, heights, inner derivatives), by the installed
    :data:`SplineKernel` where there is one and it applies."""
    kernel = _KERNEL.get()
    if kernel is not None and not inverse:
        fast = kernel(x, phi, bins, bound)
        if fast is not None:
            return fast
    return rational_quadratic_spline(x, phi[..., :bins], phi[..., bins : 2 * bins], phi[..., 2 * bins :], bound,
                                     inverse)
