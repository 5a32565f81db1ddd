"""The native training step and evaluation held to the reference model (autograd) for every variant they cover, and the build."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from flowsweep.model import CouplingFlows, ModelSpec
from flowsweep.native import NativeStep, covers, lanes, native_available, native_log_prob
from flowsweep.structure import random_structure
from flowsweep.training import evaluate_bpd, row_bpd, train

from .conftest import train_recipe
from tests.test_model import MATRIX

pytestmark = pytest.mark.skipif(not native_available(), reason="no C compiler: the PyTorch kernel is used")


COVERED = [dict(constant="exp"), dict(constant="linear")]


def make_flow(k: int, d: int, m: int, depth: int, seed: int = 0, noise: float = 0.3, **variant) -> CouplingFlows:
    rng = np.random.default_rng(seed)
    flow = CouplingFlows(ModelSpec(d, m, depth, **variant), [random_structure(d, m, depth, rng) for _ in range(k)],
                         [torch.Generator().manual_seed(seed + i) for i in range(k)])
    with torch.no_grad():  # away from the identity start, so every term of the backward pass matters
        flow.theta.add_(noise * torch.randn(flow.theta.shape, generator=torch.Generator().manual_seed(seed)))
    return flow


def native(flow: CouplingFlows, x: torch.Tensor, threads: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """The native step on minibatches ``x`` ``[K, N, d]``, read in place from a shuffled table of rows."""
    k, n, d = x.shape
    order = torch.randperm(k * n, generator=torch.Generator().manual_seed(5))
    data = torch.empty(k * n, d)
    data[order] = x.reshape(k * n, d)
    rows = order.view(k, n)
    nll, grad = NativeStep(flow.spec, flow.k, threads)(data, rows, flow.theta, flow.perm)
    return nll.clone(), grad.clone()


def test_the_kernel_is_as_wide_as_the_machine():
    flags = next((line for line in open("/proc/cpuinfo") if line.startswith("flags")), "") if os.path.exists(
        "/proc/cpuinfo") else ""
    if " avx512f" in flags:
        assert lanes() == 16
    elif " avx2" in flags:
        assert lanes() == 8
    else:
        assert lanes() in (8, 16)


def test_the_kernel_covers_exactly_the_paper_layer():
    covered = [v for v in MATRIX if covers(ModelSpec(4, 2, 2, **v))]
    assert covered == [dict(order="constant_first", constant=c, direction="normalizing", conditioner="tanh",
                            coupling="affine") for c in ("exp", "linear")]


@pytest.mark.parametrize("variant", COVERED, ids=lambda v: v["constant"])
@pytest.mark.parametrize("k, d, m, depth, n", [
    (3, 10, 5, 8, 380),  # magic's shape; 380 = 47.5 blocks of eight
    (2, 60, 30, 2, 16),  # sonar's
    (4, 8, 4, 3, 29),    # yeast's
    (3, 5, 1, 2, 7),     # fewer samples than one block
    (1, 2, 1, 1, 1),
])
def test_native_step_equals_the_reference_in_float64(k, d, m, depth, n, variant):
    # The reference runs in float64, so the comparison measures the native kernel's own
    # float32 error, not the sum of two.
    flow = make_flow(k, d, m, depth, **variant)
    x = torch.randn(k, n, d, generator=torch.Generator().manual_seed(7))
    nll, grad = native(flow, x)
    exact = flow.double()
    nll_ref = exact.nll(x.double())
    nll_ref.sum().backward()
    grad_ref = exact.theta.grad
    torch.testing.assert_close(nll.double(), nll_ref, rtol=2e-6, atol=1e-5)
    torch.testing.assert_close(grad.double(), grad_ref, rtol=1e-4, atol=1e-4 * float(grad_ref.abs().max()))


@pytest.mark.parametrize("variant", COVERED, ids=lambda v: v["constant"])
@pytest.mark.parametrize("k, d, m, depth, n", [(3, 10, 5, 8, 381), (2, 60, 30, 2, 17), (4, 8, 4, 3, 29), (1, 2, 1, 1, 1)])
def test_native_evaluation_equals_the_reference_log_prob_in_float64(k, d, m, depth, n, variant):
    flow = make_flow(k, d, m, depth, **variant)
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(9)) * 2
    logp = native_log_prob(flow.spec, x, flow.theta, flow.perm)
    assert logp.shape == (k, n) and logp.dtype == torch.float32
    with torch.no_grad():
        exact = flow.double().log_prob(x.double())
    # Rows far out reach |log p| ~ 1e6, where float32 resolves 0.06: the tolerance is relative.
    torch.testing.assert_close(logp.double(), exact, rtol=1e-5, atol=1e-4)


def test_native_evaluation_of_a_row_depends_on_nothing_else_and_row_bpd_uses_it():
    flow = make_flow(5, 10, 5, 4, seed=4)
    x = torch.randn(100, 10, generator=torch.Generator().manual_seed(2))
    logp = native_log_prob(flow.spec, x, flow.theta, flow.perm, threads=1)
    assert torch.equal(native_log_prob(flow.spec, x, flow.theta, flow.perm, threads=2), logp)
    assert torch.equal(native_log_prob(flow.spec, x[37:38], flow.theta, flow.perm)[:, 0], logp[:, 37])  # bitwise
    assert torch.equal(native_log_prob(flow.spec, x, flow.theta[2:3], flow.perm[2:3])[0], logp[2])
    rows = row_bpd(flow, x, log_det=1.5)
    torch.testing.assert_close(rows, (-logp.double() + 1.5) / (10 * np.log(2.0)))  # the native path, in float64
    reference = row_bpd(flow, x, log_det=1.5, kernel="torch")
    assert not torch.equal(rows, reference)  # the two round differently ...
    torch.testing.assert_close(rows, reference, rtol=1e-5, atol=1e-5)  # ... by float32 error only
    with torch.no_grad():
        flow.params()["weight"][1, 0, 0, 0] = float("nan")
    scores = evaluate_bpd(flow, x)
    assert scores[1] == float("inf") and torch.isfinite(scores[[0, 2, 3, 4]]).all()


def test_models_are_independent_of_the_batch_and_of_threads():
    flow = make_flow(6, 10, 5, 4, seed=3)
    x = torch.randn(6, 50, 10, generator=torch.Generator().manual_seed(1))
    nll, grad = native(flow, x, threads=1)
    for threads in (2, 4):
        again = native(flow, x, threads=threads)
        assert torch.equal(again[0], nll) and torch.equal(again[1], grad)
    alone = CouplingFlows(flow.spec, [flow.structures[4]], [torch.Generator()])
    alone.copy_model(0, flow, 4)
    nll4, grad4 = native(alone, x[4:5])
    assert torch.equal(nll4[0], nll[4]) and torch.equal(grad4[0], grad[4])  # bitwise


def test_a_poisoned_model_yields_nan_and_leaves_the_others_alone():
    flow = make_flow(3, 6, 3, 2)
    x = torch.randn(3, 20, 6)
    clean = native(flow, x)
    with torch.no_grad():
        flow.params()["weight"][1, 0, 0, 0] = float("nan")
        flow.params()["scale"][2, 1, 0] = float("inf")
    nll, grad = native(flow, x)
    assert torch.isnan(nll[1]) and not torch.isfinite(nll[2])
    assert torch.equal(nll[0], clean[0][0]) and torch.equal(grad[0], clean[1][0])


@pytest.mark.parametrize("variant", COVERED, ids=lambda v: v["constant"])
def test_training_with_the_native_kernel_follows_the_reference(variant):
    data = torch.randn(400, 6) * torch.linspace(0.5, 2.0, 6) + 1.0
    structures = [random_structure(6, 3, 3, np.random.default_rng(i)) for i in range(3)]
    curves = {}
    for kernel in ("torch", "native"):
        gens = [torch.Generator().manual_seed(20 + i) for i in range(3)]
        flow = CouplingFlows(ModelSpec(6, 3, 3, **variant), structures, gens)
        recipe = train_recipe(steps=30, base_lr=1e-4, max_lr=2e-3, step_size_up=10, kernel=kernel, threads=2,
                              optimizer="sgd", schedule="cyclic", patience=None)
        curves[kernel] = train(flow, data, 32, recipe, gens).curve
    torch.testing.assert_close(curves["native"], curves["torch"], rtol=1e-4, atol=1e-4)
    assert curves["native"][-1].mean() < curves["native"][0].mean()  # it trained


def test_a_variant_the_kernel_does_not_cover_trains_on_the_reference_path():
    base = torch.randn(300, 6, generator=torch.Generator().manual_seed(0))
    data = 3.0 * base + base.roll(1, dims=1)  # far from the base density, so training has something to learn
    spec = ModelSpec(6, 3, 2, conditioner="mlp", hidden=8, order="coupling_first", direction="generative")
    assert not covers(spec)
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    flow = CouplingFlows(spec, [random_structure(6, 3, 2, np.random.default_rng(i)) for i in range(2)], gens)
    recipe = train_recipe(steps=40, max_lr=1e-2, optimizer="adam", kernel="native", schedule="cyclic", patience=None,
                          threads=1)
    result = train(flow, data, 32, recipe, gens)
    assert torch.isfinite(result.curve).all() and result.curve[-5:].mean() < result.curve[:5].mean()
    with pytest.raises(ValueError, match="does not cover"):
        NativeStep(spec, 2)


def test_without_a_compiler_training_falls_back_to_the_reference_with_one_warning(tmp_path):
    script = textwrap.dedent("""
        import warnings, torch
        from flowsweep.model import CouplingFlows, ModelSpec
        from flowsweep.structure import parity_structure
        from flowsweep.config.compose import compose_config
        from flowsweep.training import Recipe, train
        flow = CouplingFlows(ModelSpec(4, 2, 2), [parity_structure(4, 2, 2)], [torch.Generator().manual_seed(0)])
        recipe = Recipe.from_config(compose_config([]).train, steps=5, max_lr=1e-3, base_lr=1e-4, step_size_up=2,
                                    kernel="native", optimizer="sgd", schedule="cyclic", patience=None, threads=1)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = train(flow, torch.randn(100, 4), 10, recipe,
                           [torch.Generator().manual_seed(1)])
        print(len(caught), str(caught[0].message) if caught else "", bool(torch.isfinite(result.curve).all()))
    """)
    env = {**os.environ, "CC": str(tmp_path / "no-such-cc"), "FLOWSWEEP_CACHE_DIR": str(tmp_path / "cache"),
           "PATH": str(tmp_path)}  # no cc, no gcc
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    count, *_, finite = done.stdout.split()
    assert count == "1" and finite == "True"
    assert "native training step unavailable" in done.stdout and "no C compiler" in done.stdout


def test_the_library_is_built_once_per_cache(tmp_path):
    script = "from flowsweep.native import load_library; print(load_library()._name)"
    env = {**os.environ, "FLOWSWEEP_CACHE_DIR": str(tmp_path)}
    first = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    built = list((tmp_path / "native").glob("*.so"))
    assert [str(p) for p in built] == [first.stdout.strip()]
    stamp = built[0].stat().st_mtime_ns
    second = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert second.stdout == first.stdout and built[0].stat().st_mtime_ns == stamp  # loaded, not rebuilt
