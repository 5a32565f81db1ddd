"""``train.kernel=cuda``: the reference model on a CUDA GPU trains and scores as on the CPU.

Skipped where PyTorch sees no GPU (CI); run on a machine with one. Where there is none,
asking for ``cuda`` is one clear line (tests/reliability/test_cases.py).
"""

import numpy as np
import pytest
import torch

from flowsweep.model import CouplingFlows, ModelSpec
from flowsweep.structure import random_structure
from flowsweep.training import row_bpd, train

from .conftest import train_recipe

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="PyTorch sees no CUDA GPU")

SPECS = {
    "affine, tanh (the paper's)": ModelSpec(6, 3, 3),
    "affine, mlp": ModelSpec(6, 3, 3, conditioner="mlp", hidden=[16, 16]),
    "spline, mlp": ModelSpec(6, 3, 3, coupling="spline", bins=6, tail_bound=3.0, conditioner="mlp", hidden=[16]),
}


def _data() -> torch.Tensor:
    base = torch.randn(600, 6, generator=torch.Generator().manual_seed(0))
    return base + 0.5 * base.roll(1, dims=1).square()


@pytest.mark.parametrize("name", list(SPECS))
def test_the_autograd_step_copies_the_moving_models_and_gives_each_its_own_gradient(name):
    """The copies a GPU step makes (the moving models' parameters into a flow of their own, made
    again as the set changes, nll and gradient back on the CPU), run on the CPU, where the
    subsets take the same path: each model's numbers equal that model's computed alone."""
    from flowsweep.training import _autograd_part, _moving_only

    spec, data = SPECS[name], _data()
    structures = [random_structure(6, 3, 3, np.random.default_rng(i)) for i in range(4)]
    flow = CouplingFlows(spec, structures, [torch.Generator().manual_seed(10 + i) for i in range(4)])
    step = _moving_only(flow, _autograd_part(flow, data, torch.device("cpu"), None))
    rows = torch.randint(600, (4, 32), generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    for moving in (None, torch.tensor([True, False, True, True]), torch.tensor([True, False, True, True]),
                   torch.tensor([False, False, True, False]), None):
        with torch.no_grad():  # as an optimizer step would: a copy made earlier must not go stale
            flow.theta.add_(0.05 * torch.randn(flow.theta.shape, generator=g))
        nll, grad = step(rows, moving)
        assert nll.device.type == grad.device.type == "cpu"
        for i in range(4):
            if moving is not None and not moving[i]:
                assert torch.isnan(nll[i]) and not grad[i].any()
                continue
            alone = flow.select([i])
            want_nll = alone.nll(data[rows[i]].unsqueeze(0))
            want_nll.sum().backward()
            torch.testing.assert_close(nll[i], want_nll.detach()[0])
            torch.testing.assert_close(grad[i], alone.theta.grad[0])


@gpu
@pytest.mark.parametrize("name", list(SPECS))
def test_a_flow_trains_and_scores_on_the_gpu_as_on_the_cpu(name):
    spec, data = SPECS[name], _data()
    valid = data[:100]
    structures = [random_structure(6, 3, 3, np.random.default_rng(i)) for i in range(4)]
    results, scores, thetas = {}, {}, {}
    for kernel in ("torch", "cuda"):
        gens = [torch.Generator().manual_seed(10 + i) for i in range(4)]
        flow = CouplingFlows(spec, structures, gens)
        recipe = train_recipe(steps=60, max_lr=3e-3, optimizer="adam", schedule="constant", kernel=kernel,
                              eval_every=10, patience=2, threads=1)
        results[kernel] = train(flow, data[100:], 32, recipe, gens, valid=valid)
        scores[kernel] = row_bpd(flow, data, kernel=kernel)
        thetas[kernel] = flow.theta.detach()
        assert flow.theta.device.type == "cpu"  # the flow stays on the CPU: the rest of a job is unchanged
    torch.testing.assert_close(results["cuda"].curve, results["torch"].curve, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(results["cuda"].val_curve, results["torch"].val_curve, rtol=1e-3, atol=1e-3)
    assert torch.equal(results["cuda"].steps, results["torch"].steps)  # the same models stopped at the same steps
    torch.testing.assert_close(thetas["cuda"], thetas["torch"], rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(scores["cuda"], scores["torch"], rtol=1e-4, atol=1e-4)
    assert results["cuda"].curve[-5:].mean() < results["cuda"].curve[:5].mean()  # it trained


@gpu
def test_frozen_and_diverged_models_cost_nothing_and_leave_the_others_alone():
    spec, data = SPECS["spline, mlp"], _data()
    structures = [random_structure(6, 3, 3, np.random.default_rng(i)) for i in range(3)]
    curves = {}
    for kernel in ("torch", "cuda"):
        gens = [torch.Generator().manual_seed(20 + i) for i in range(3)]
        flow = CouplingFlows(spec, structures, gens)
        recipe = train_recipe(steps=30, max_lr=3e-3, optimizer="adam", schedule="constant", kernel=kernel,
                              patience=None, threads=1)
        curves[kernel] = train(flow, data, 32, recipe, gens, frozen=torch.tensor([False, True, False])).curve
    assert torch.isnan(curves["cuda"][:, 1]).all()
    torch.testing.assert_close(curves["cuda"], curves["torch"], rtol=1e-3, atol=1e-3, equal_nan=True)
