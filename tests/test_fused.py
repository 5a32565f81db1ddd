"""The fused log-density kernel against plain autograd: values, gradients, no-grad and training paths."""

import numpy as np
import pytest
import torch

from flowsweep.engine import BatchedCouplingFlow
from flowsweep import fused
from flowsweep.fused import FusedLogProb
from flowsweep.structure import random_structure

def make_flow(k=3, d=7, m=3, depth=3, seed=0) -> BatchedCouplingFlow:
    rng = np.random.default_rng(seed)
    flow = BatchedCouplingFlow([random_structure(d, m, depth, rng) for _ in range(k)],
                               [torch.Generator().manual_seed(seed + i) for i in range(k)])
    with torch.no_grad():  # away from the identity start, so every term of the backward pass matters
        flow.theta.add_(0.3 * torch.randn(flow.theta.shape, generator=torch.Generator().manual_seed(seed)))
    return flow.double()

def reference_log_prob(flow: BatchedCouplingFlow, x: torch.Tensor) -> torch.Tensor:
    """Change of variables through the plain-operation forward pass (data order, gathers, torch.tanh)."""
    z, logdet = flow(x)
    return torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1) + logdet

@pytest.mark.parametrize("seed", [0, 1])
def test_log_prob_equals_plain_forward(seed):
    flow = make_flow(seed=seed)
    x = torch.randn(flow.k, 9, flow.d, dtype=torch.float64)
    torch.testing.assert_close(flow.log_prob(x), reference_log_prob(flow, x), rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(flow.nll(x), -reference_log_prob(flow, x).mean(1), rtol=1e-12, atol=1e-10)
    with torch.no_grad():  # the no-grad path keeps two activation buffers instead of L
        torch.testing.assert_close(flow.log_prob(x), reference_log_prob(flow, x), rtol=1e-12, atol=1e-10)

@pytest.mark.parametrize("layer_by_layer", [False, True])
@pytest.mark.parametrize("mean_nll", [False, True])
@pytest.mark.parametrize("shared_x", [False, True])
def test_hand_written_backward_passes_gradcheck(mean_nll, shared_x, layer_by_layer, monkeypatch):
    monkeypatch.setattr(fused, "_HOT_LOOP", 0 if layer_by_layer else 10**9)  # both ways of the backward pass
    flow = make_flow(k=2, d=5, m=2, depth=3)
    shape = (6, flow.d) if shared_x else (flow.k, 6, flow.d)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    theta = flow.theta.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x, theta: FusedLogProb.apply(x, theta, flow.layout, flow.index, mean_nll), (x, theta))

def test_gradients_equal_autograd_through_plain_forward():
    flow = make_flow(k=4, d=10, m=5, depth=4)
    x = torch.randn(flow.k, 20, flow.d, dtype=torch.float64)
    weights = torch.randn(flow.k, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    fused = torch.autograd.grad((flow.log_prob(x) * weights).sum(), flow.theta)[0]
    plain = torch.autograd.grad((reference_log_prob(flow, x) * weights).sum(), flow.theta)[0]
    torch.testing.assert_close(fused, plain, rtol=1e-10, atol=1e-9)

def test_training_path_equals_autograd():
    flow = make_flow(k=3, d=6, m=3, depth=2)
    x = torch.randn(flow.k, 11, flow.d, dtype=torch.float64)
    weight = torch.tensor([1.0, 0.0, 0.5], dtype=torch.float64)
    nll, backward = flow.nll_step(x)
    expected = torch.autograd.grad((flow.nll(x) * weight).sum(), flow.theta)[0]
    torch.testing.assert_close(nll, flow.nll(x).detach())
    torch.testing.assert_close(backward(weight), expected)
    assert torch.all(backward(weight)[1] == 0)  # a zero weight gives an exact zero gradient


def test_both_ways_of_the_backward_pass_agree_bitwise(monkeypatch):
    flow = make_flow(k=3, d=6, m=3, depth=4).float()
    x = torch.randn(flow.k, 40, flow.d)
    grads = []
    for threshold in (0, 10**9):
        monkeypatch.setattr(fused, "_HOT_LOOP", threshold)
        grads.append(flow.nll_step(x)[1](torch.ones(flow.k)))
    assert torch.equal(*grads)
