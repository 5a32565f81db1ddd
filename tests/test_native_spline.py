"""The fused native spline against the reference spline and its autograd gradient."""

import numpy as np
import pytest
import torch

from flowsweep.model import CouplingFlows, ModelSpec
from flowsweep.model.spline import rational_quadratic_spline, spline, spline_kernel
from flowsweep.native import native_available
from flowsweep.native.spline import max_bins, native_spline
from flowsweep.structure import random_structure
from flowsweep.training import row_bpd, torch_threads, train

from .conftest import train_recipe

pytestmark = pytest.mark.skipif(not native_available(), reason="no C compiler")


def _inputs(n: int, bins: int, bound: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g, dtype=torch.float64) * bound * 0.6
    x[:6] = torch.tensor([-bound, bound, 1.5 * bound, -3.0 * bound, 0.0, bound * (1 - 1e-6)], dtype=torch.float64)
    phi = torch.randn(n, 3 * bins - 1, generator=g, dtype=torch.float64) * 1.5
    return x, phi


def _reference(x, phi, bins, bound):
    return rational_quadratic_spline(x, phi[..., :bins], phi[..., bins : 2 * bins], phi[..., 2 * bins :], bound)


@pytest.mark.parametrize("bins, bound, n", [(2, 3.0, 37), (3, 1.0, 200), (8, 5.0, 1000), (23, 2.0, 301), (64, 5.0, 150)])
def test_native_spline_and_its_gradient_equal_the_reference_in_float64(bins, bound, n):
    x, phi = _inputs(n, bins, bound)
    g = torch.Generator().manual_seed(1)
    grad_y, grad_lad = torch.randn(n, generator=g, dtype=torch.float64), torch.randn(n, generator=g, dtype=torch.float64)
    x64, phi64 = x.clone().requires_grad_(), phi.clone().requires_grad_()
    y, lad = _reference(x64, phi64, bins, bound)
    gx, gphi = torch.autograd.grad((y * grad_y).sum() + (lad * grad_lad).sum(), [x64, phi64])

    x32, phi32 = x.float().requires_grad_(), phi.float().requires_grad_()
    out = native_spline(x32, phi32, bins, bound)
    assert out is not None
    y32, lad32 = out
    gx32, gphi32 = torch.autograd.grad((y32 * grad_y.float()).sum() + (lad32 * grad_lad.float()).sum(), [x32, phi32])
    # float32 against float64: within a float32 reference's own rounding of the same numbers
    torch.testing.assert_close(y32.double(), y, rtol=1e-4, atol=1e-4 * bound)
    torch.testing.assert_close(lad32.double(), lad, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(gx32.double(), gx, rtol=5e-3, atol=1e-3)
    torch.testing.assert_close(gphi32.double(), gphi, rtol=2e-3, atol=2e-3 * gphi.abs().max().item())
    outside = x.abs() > bound
    assert torch.equal(y32[outside], x32.detach()[outside]) and (lad32[outside] == 0).all()
    assert (gphi32[outside] == 0).all() and torch.equal(gx32[outside], grad_y.float()[outside])


def test_an_element_depends_on_nothing_else_and_threads_change_nothing():
    x, phi = _inputs(50_000, 8, 4.0)
    x, phi = x.float(), phi.float()
    phi[7, 3] = float("nan")  # one element's parameters poisoned
    with torch.no_grad():
        with torch_threads(1):
            y1, lad1 = native_spline(x, phi, 8, 4.0)
        with torch_threads(2):
            y2, lad2 = native_spline(x, phi, 8, 4.0)
        part_y, part_lad = native_spline(x[1000:1013], phi[1000:1013], 8, 4.0)
    same = dict(rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close((y2, lad2), (y1, lad1), **same)
    torch.testing.assert_close((part_y, part_lad), (y1[1000:1013], lad1[1000:1013]), **same)
    assert torch.isnan(y1[7]) and torch.isfinite(y1[8:]).all() and torch.isfinite(y1[:7]).all()


def test_where_it_does_not_apply_the_reference_runs():
    x, phi = _inputs(20, 4, 2.0)
    assert native_spline(x, phi, 4, 2.0) is None  # float64
    too_many = max_bins() + 1
    x32, phi32 = _inputs(20, too_many, 2.0)
    assert native_spline(x32.float(), phi32.float(), too_many, 2.0) is None
    with spline_kernel(native_spline):
        y, lad = spline(x, phi, 4, 2.0)  # falls back to the reference
        z, phi32 = y.float(), phi.float()
        inverse = spline(z, phi32, 4, 2.0, inverse=True)  # the inverse is the reference's
    reference = _reference(x, phi, 4, 2.0)
    assert torch.equal(y, reference[0]) and torch.equal(lad, reference[1])
    expected = rational_quadratic_spline(z, phi32[:, :4], phi32[:, 4:8], phi32[:, 8:], 2.0, inverse=True)
    torch.testing.assert_close(inverse, expected, rtol=0, atol=0)


def test_a_spline_flow_trains_the_same_on_the_native_spline_as_on_the_reference():
    base = torch.randn(400, 6, generator=torch.Generator().manual_seed(0))
    data = base + 0.5 * base.roll(1, dims=1).square()
    spec = ModelSpec(6, 3, 2, coupling="spline", bins=6, tail_bound=3.0, conditioner="mlp", hidden=[16])
    structures = [random_structure(6, 3, 2, np.random.default_rng(i)) for i in range(3)]
    curves, scores = {}, {}
    for kernel in ("torch", "native"):
        gens = [torch.Generator().manual_seed(10 + i) for i in range(3)]
        flow = CouplingFlows(spec, structures, gens)
        recipe = train_recipe(steps=40, max_lr=3e-3, optimizer="adam", schedule="constant", kernel=kernel,
                              patience=None, threads=1)
        curves[kernel] = train(flow, data, 32, recipe, gens).curve
        scores[kernel] = row_bpd(flow, data, kernel=kernel)
    torch.testing.assert_close(curves["native"], curves["torch"], rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(scores["native"], scores["torch"], rtol=1e-3, atol=1e-3)
    assert curves["native"][-5:].mean() < curves["native"][:5].mean()  # it trained
