"""The batched coupling flow: invertibility, exact log-determinants, gradients, batching."""

import numpy as np
import pytest
import torch

from flowsweep.engine import BatchedCouplingFlow
from flowsweep.structure import parity_structure, random_structure
from flowsweep.training import Schedule, evaluate_bpd, train


def make_flow(k: int = 3, d: int = 5, m: int = 2, depth: int = 3, seed: int = 0) -> BatchedCouplingFlow:
    rng = np.random.default_rng(seed)
    structures = [random_structure(d, m, depth, rng) for _ in range(k)]
    flow = BatchedCouplingFlow(structures, [torch.Generator().manual_seed(seed + i) for i in range(k)])
    with torch.no_grad():  # move away from the identity start so every term matters
        flow.theta.add_(0.3 * torch.randn(flow.theta.shape, generator=torch.Generator().manual_seed(seed)))
    return flow.double()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_inverse_undoes_forward(seed):
    flow = make_flow(seed=seed)
    x = torch.randn(flow.k, 7, flow.d, dtype=torch.float64)
    z, logdet = flow(x)
    x_back, inv_logdet = flow.inverse(z)
    torch.testing.assert_close(x_back, x)
    torch.testing.assert_close(inv_logdet, -logdet)


@pytest.mark.parametrize("seed", [0, 3])
def test_logdet_matches_autograd_jacobian(seed):
    flow = make_flow(seed=seed)
    x = torch.randn(flow.k, 4, flow.d, dtype=torch.float64)
    _, logdet = flow(x)
    for k in range(flow.k):
        for i in range(x.shape[1]):

            def single(v, k=k):
                inp = x.clone()
                inp[k, i] = v
                return flow(inp)[0][k, i]

            jac = torch.autograd.functional.jacobian(single, x[k, i])
            torch.testing.assert_close(logdet[k, i], torch.linalg.slogdet(jac)[1])


def test_every_parameter_receives_a_gradient():
    flow = make_flow()
    flow.log_prob(torch.randn(flow.k, 16, flow.d, dtype=torch.float64)).sum().backward()
    for name, grad in zip(("log_scale", "shift", "weight", "bias"), flow.layout.split(flow.theta.grad)):
        # every layer of every model: a parameter block the kernel forgot would stay zero
        assert torch.all(grad.flatten(2).abs().sum(2) > 0), name


def test_log_prob_is_a_normalised_density_in_1d_slices():
    # Standard normal prior pushed through an exact bijection: sampling then scoring agrees
    # with the change-of-variables formula computed from the inverse.
    flow = make_flow(k=2)
    x = flow.sample(5, torch.Generator().manual_seed(0))
    z, logdet = flow(x)
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1) + logdet
    torch.testing.assert_close(flow.log_prob(x), expected)


def test_models_do_not_interact():
    flow = make_flow(k=3)
    x = torch.randn(3, 8, flow.d, dtype=torch.float64)
    base = flow.log_prob(x)
    x2 = x.clone()
    x2[1] += 10.0
    changed = flow.log_prob(x2)
    torch.testing.assert_close(changed[[0, 2]], base[[0, 2]])
    assert not torch.allclose(changed[1], base[1])


def test_model_trained_in_a_batch_equals_model_trained_alone():
    d, m, depth = 6, 3, 4
    data = torch.randn(500, d) * torch.linspace(0.5, 3.0, d) + 1.0
    rng = np.random.default_rng(0)
    structures = [random_structure(d, m, depth, rng) for _ in range(4)]
    seeds = [11, 12, 13, 14]
    schedule = Schedule(steps=30, base_lr=1e-3, max_lr=1e-2, step_size_up=10)

    def run(indices):
        gens = [torch.Generator().manual_seed(seeds[i]) for i in indices]
        flow = BatchedCouplingFlow([structures[i] for i in indices], gens)
        result = train(flow, data, 32, schedule, gens)
        return result.curve, evaluate_bpd(flow, data)

    batch_curve, batch_bpd = run([0, 1, 2, 3])
    for i in range(4):
        alone_curve, alone_bpd = run([i])
        torch.testing.assert_close(alone_curve[:, 0], batch_curve[:, i], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(alone_bpd[0], batch_bpd[i], rtol=1e-5, atol=1e-5)


def test_diverging_model_is_frozen_and_others_unaffected():
    d, m, depth = 4, 2, 2
    data = torch.randn(200, d)
    structures = [parity_structure(d, m, depth)] * 3
    schedule = Schedule(steps=20, base_lr=1e-3, max_lr=1e-2, step_size_up=5)

    def run(poison: bool):
        gens = [torch.Generator().manual_seed(i) for i in range(3)]
        flow = BatchedCouplingFlow(structures, gens)
        if poison:
            with torch.no_grad():
                flow.log_scale[1, 0, 0] = float("inf")
        result = train(flow, data, 16, schedule, gens)
        return flow, result

    clean_flow, clean = run(False)
    flow, poisoned = run(True)
    assert poisoned.diverged.tolist() == [False, True, False]
    assert not clean.diverged.any()
    torch.testing.assert_close(poisoned.curve[:, [0, 2]], clean.curve[:, [0, 2]])
    assert torch.isinf(flow.log_scale[1, 0, 0])  # frozen as it was, not updated into NaN
    assert torch.isfinite(flow.weight[1]).all()
    assert torch.isinf(evaluate_bpd(flow, data)[1])


def test_training_threads_change_rounding_only():
    # torch's threads are a speed setting: two threads may only change how sums round.
    d, m, depth, k = 5, 2, 3, 4
    data = torch.randn(300, d) * 2.0 + 1.0
    rng = np.random.default_rng(1)
    structures = [random_structure(d, m, depth, rng) for _ in range(k)]

    def run(threads: int):
        gens = [torch.Generator().manual_seed(20 + i) for i in range(k)]
        flow = BatchedCouplingFlow(structures, gens)
        schedule = Schedule(steps=12, base_lr=1e-3, max_lr=1e-2, step_size_up=4, threads=threads)
        before = torch.get_num_threads()
        result = train(flow, data, 64, schedule, gens)
        assert torch.get_num_threads() == before  # restored
        return result.curve

    torch.testing.assert_close(run(1), run(2), rtol=1e-5, atol=1e-5)
