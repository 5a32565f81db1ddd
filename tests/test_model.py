"""The reference model, every variant: invertibility, exact log-determinants, gradients, batching."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from flowsweep.model import CONDITIONERS, CONSTANTS, COUPLINGS, DIRECTIONS, ORDERS, CouplingFlows, ModelSpec
from flowsweep.structure import parity_structure, random_structure
from flowsweep.training import evaluate_bpd, train

from .conftest import train_recipe

#: Every combination of the choices that change the function (init only changes the start).
VARIANTS = [dict(order=o, constant=c, direction=r, conditioner=n)
            for o, c, r, n in itertools.product(ORDERS, CONSTANTS, DIRECTIONS, CONDITIONERS)]
#: The same matrix for both couplings: the spline's with a small tail bound, so samples land
#: in the spline, in its tails and on both sides of the bound.
MATRIX = [dict(v, coupling=c) for c in COUPLINGS for v in VARIANTS]
IDS = ["-".join(v.values()) for v in MATRIX]


def make_flow(variant: dict, k: int = 3, d: int = 5, m: int = 2, depth: int = 3, seed: int = 0) -> CouplingFlows:
    rng = np.random.default_rng(seed)
    shape = dict(hidden=[4, 3], activation="tanh") if variant.get("conditioner") == "mlp" else {}
    spec = ModelSpec(d, m, depth, bins=4, tail_bound=1.5, **shape, **variant)
    flow = CouplingFlows(spec, [random_structure(d, m, depth, rng) for _ in range(k)],
                         [torch.Generator().manual_seed(seed + i) for i in range(k)])
    with torch.no_grad():  # move away from the identity start so every term matters
        flow.theta.add_(0.3 * torch.randn(flow.theta.shape, generator=torch.Generator().manual_seed(seed)))
    return flow.double()


@pytest.mark.parametrize("variant", MATRIX, ids=IDS)
def test_inverse_undoes_forward(variant):
    flow = make_flow(variant)
    x = torch.randn(flow.k, 7, flow.d, dtype=torch.float64)
    z, logdet = flow(x)
    x_back, inv_logdet = flow.inverse(z)
    torch.testing.assert_close(x_back, x)
    torch.testing.assert_close(inv_logdet, -logdet)


@pytest.mark.parametrize("variant", MATRIX, ids=IDS)
def test_logdet_matches_autograd_jacobian(variant):
    flow = make_flow(variant, k=2)
    x = torch.randn(flow.k, 3, flow.d, dtype=torch.float64)
    _, logdet = flow(x)
    for k in range(flow.k):
        for i in range(x.shape[1]):

            def single(v, k=k, i=i):
                inp = x.clone()
                inp[k, i] = v
                return flow(inp)[0][k, i]

            jac = torch.autograd.functional.jacobian(single, x[k, i])
            torch.testing.assert_close(logdet[k, i], torch.linalg.slogdet(jac)[1])


@pytest.mark.parametrize("variant", MATRIX, ids=IDS)
def test_every_parameter_receives_a_gradient(variant):
    flow = make_flow(variant)
    flow.log_prob(torch.randn(flow.k, 16, flow.d, dtype=torch.float64)).sum().backward()
    for name, grad in flow.layout.split(flow.theta.grad).items():
        # every layer of every model: a block the model forgot would stay zero
        assert torch.all(grad.flatten(2).abs().sum(2) > 0), name


@pytest.mark.parametrize("variant", MATRIX, ids=IDS)
def test_sampling_and_scoring_agree_with_the_change_of_variables(variant):
    flow = make_flow(variant, k=2)
    x = flow.sample(5, torch.Generator().manual_seed(0))
    z, logdet = flow(x)
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1) + logdet
    torch.testing.assert_close(flow.log_prob(x), expected)


def test_the_directions_are_inverse_readings_of_the_same_layers():
    # A generative flow's density is the normalizing flow's with every layer inverted: the same
    # parameters, read the other way, give log p_gen(x) = log N(F(x)) - log|det| of F's inverse...
    # checked here as: the generative flow maps latent to data by the normalizing flow's inverse map.
    normalizing = make_flow(dict(direction="normalizing"))
    generative = make_flow(dict(direction="generative"))
    z = torch.randn(3, 6, 5, dtype=torch.float64)
    torch.testing.assert_close(generative.inverse(z)[0], normalizing(z)[0])


@pytest.mark.parametrize("init", ["uniform", "zero"])
def test_initialisation(init):
    spec = ModelSpec(6, 3, 2, init=init, conditioner="mlp", hidden=4)
    assert spec.layout().names == ("scale", "shift", "hidden_weight_0", "hidden_bias_0", "weight", "bias")
    flow = CouplingFlows(spec, [parity_structure(6, 3, 2)] * 2, [torch.Generator().manual_seed(i) for i in range(2)])
    params = flow.params()
    assert torch.equal(params["scale"], torch.zeros_like(params["scale"]))  # constant transforms: identity
    assert torch.equal(params["shift"], torch.zeros_like(params["shift"]))
    assert 0 < params["hidden_weight_0"].abs().max() <= 1 / np.sqrt(3)
    x = torch.randn(10, 6)
    if init == "zero":  # the output layer at zero: the flow starts as the identity
        assert not params["weight"].any() and not params["bias"].any()
        torch.testing.assert_close(flow(x)[0], x.expand(2, -1, -1))
    else:
        assert 0 < params["weight"].abs().max() <= 1 / np.sqrt(4)
    linear = CouplingFlows(ModelSpec(6, 3, 2, constant="linear"), [parity_structure(6, 3, 2)])
    assert torch.equal(linear.params()["scale"], torch.ones(1, 2, 6))


def test_models_do_not_interact():
    flow = make_flow({}, k=3)
    x = torch.randn(3, 8, flow.d, dtype=torch.float64)
    base = flow.log_prob(x)
    x2 = x.clone()
    x2[1] += 10.0
    changed = flow.log_prob(x2)
    torch.testing.assert_close(changed[[0, 2]], base[[0, 2]])
    assert not torch.allclose(changed[1], base[1])


@pytest.mark.parametrize("kernel", ["native", "torch"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_model_trained_in_a_batch_equals_model_trained_alone(kernel, optimizer):
    d, m, depth = 6, 3, 4
    data = torch.randn(500, d) * torch.linspace(0.5, 3.0, d) + 1.0
    rng = np.random.default_rng(0)
    structures = [random_structure(d, m, depth, rng) for _ in range(4)]
    seeds = [11, 12, 13, 14]
    recipe = train_recipe(steps=30, base_lr=1e-3, max_lr=1e-2, step_size_up=10, kernel=kernel, optimizer=optimizer,
                    clip_norm=5.0, weight_decay=1e-4, schedule="cyclic", patience=None, threads=1)

    def run(indices):
        gens = [torch.Generator().manual_seed(seeds[i]) for i in indices]
        flow = CouplingFlows(ModelSpec(d, m, depth), [structures[i] for i in indices], gens)
        result = train(flow, data, 32, recipe, gens)
        return result.curve, evaluate_bpd(flow, data)

    batch_curve, batch_bpd = run([0, 1, 2, 3])
    for i in range(4):
        alone_curve, alone_bpd = run([i])
        torch.testing.assert_close(alone_curve[:, 0], batch_curve[:, i], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(alone_bpd[0], batch_bpd[i], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel, coupling", [("native", "affine"), ("torch", "affine"), ("torch", "spline"),
                                              ("native", "spline")])
def test_diverging_model_is_frozen_and_others_unaffected(kernel, coupling):
    # (the torch path then trains the two moving models as a flow of their own: the same numbers)
    d, m, depth = 4, 2, 2
    data = torch.randn(200, d)
    structures = [parity_structure(d, m, depth)] * 3
    recipe = train_recipe(steps=20, base_lr=1e-3, max_lr=1e-2, step_size_up=5, kernel=kernel, optimizer="adam",
                          schedule="cyclic", patience=None, threads=1)

    def run(poison: bool):
        gens = [torch.Generator().manual_seed(i) for i in range(3)]
        flow = CouplingFlows(ModelSpec(d, m, depth, coupling=coupling, init="uniform"), structures, gens)
        if poison:
            with torch.no_grad():
                flow.params()["scale"][1, 0, 0] = float("inf")
        result = train(flow, data, 16, recipe, gens)
        return flow, result

    clean_flow, clean = run(False)
    flow, poisoned = run(True)
    assert poisoned.diverged.tolist() == [False, True, False]
    assert not clean.diverged.any()
    torch.testing.assert_close(poisoned.curve[:, [0, 2]], clean.curve[:, [0, 2]])
    assert torch.isinf(flow.params()["scale"][1, 0, 0])  # frozen as it was, not updated into NaN
    assert torch.isfinite(flow.params()["weight"][1]).all()
    assert torch.isinf(evaluate_bpd(flow, data)[1])


def test_early_stopping_keeps_each_models_best_validation_parameters():
    d, m, depth, k = 4, 2, 2, 3
    gen = torch.Generator().manual_seed(0)
    data, valid = torch.randn(64, d, generator=gen), torch.randn(400, d, generator=gen)
    recipe = train_recipe(steps=300, max_lr=0.05, optimizer="adam", schedule="constant", eval_every=10, patience=3, threads=1)
    gens = [torch.Generator().manual_seed(i) for i in range(k)]
    flow = CouplingFlows(ModelSpec(d, m, depth), [parity_structure(d, m, depth)] * k, gens)
    result = train(flow, data, 16, recipe, gens, valid=valid)
    # 64 training rows overfit: every model stops before the end, at its best validation bpd
    assert len(result.curve) < 300 and result.val_steps[-1] == len(result.curve)
    best = result.val_curve.min(0).values
    torch.testing.assert_close(evaluate_bpd(flow, valid), best)
    # a model stops `patience` evaluations after its best; resting there, it scores its best again
    assert (result.val_curve.argmin(0) < len(result.val_steps) - 1).all()
    assert (result.val_curve[-1] >= best).all() and (result.val_curve[-1] > best).any()


def test_training_threads_change_rounding_only():
    # torch's threads are a speed setting: two threads may only change how sums round.
    d, m, depth, k = 5, 2, 3, 4
    data = torch.randn(300, d) * 2.0 + 1.0
    rng = np.random.default_rng(1)
    structures = [random_structure(d, m, depth, rng) for _ in range(k)]

    def run(threads: int):
        gens = [torch.Generator().manual_seed(20 + i) for i in range(k)]
        flow = CouplingFlows(ModelSpec(d, m, depth), structures, gens)
        recipe = train_recipe(steps=12, base_lr=1e-3, max_lr=1e-2, step_size_up=4, threads=threads, kernel="torch",
                              optimizer="sgd", schedule="cyclic", patience=None)
        before = torch.get_num_threads()
        result = train(flow, data, 64, recipe, gens)
        assert torch.get_num_threads() == before  # restored
        return result.curve

    torch.testing.assert_close(run(1), run(2), rtol=1e-5, atol=1e-5)


def test_the_spline_meets_its_knots_with_their_derivatives_and_is_the_identity_at_zero():
    from flowsweep.model.spline import rational_quadratic_spline

    gen = torch.Generator().manual_seed(0)
    bins, bound = 5, 2.0
    w, h, u = (torch.randn(3, n, generator=gen, dtype=torch.float64) for n in (bins, bins, bins - 1))
    # Durkan et al.: bin k spans x_k..x_k+1 and y_k..y_k+1, knot derivatives 1 at the ends
    sizes = lambda v: 1e-3 + (1 - 1e-3 * bins) * torch.softmax(v, -1)  # noqa: E731
    knots_x = torch.cat([torch.zeros(3, 1, dtype=torch.float64), sizes(w).cumsum(-1)], -1) * 2 * bound - bound
    knots_y = torch.cat([torch.zeros(3, 1, dtype=torch.float64), sizes(h).cumsum(-1)], -1) * 2 * bound - bound
    x = knots_x[:, 1:-1].clone().requires_grad_(True)
    expand = lambda v: v.unsqueeze(1).expand(-1, bins - 1, -1)  # noqa: E731
    y, logabsdet = rational_quadratic_spline(x, expand(w), expand(h), expand(u), bound)
    torch.testing.assert_close(y, knots_y[:, 1:-1])
    slope = torch.autograd.grad(y.sum(), x)[0]
    torch.testing.assert_close(logabsdet, slope.log())
    outside = torch.tensor([-3.0, 2.5], dtype=torch.float64)
    y_out, ld_out = rational_quadratic_spline(outside, w[:2], h[:2], u[:2], bound)
    assert torch.equal(y_out, outside) and torch.equal(ld_out, torch.zeros(2, dtype=torch.float64))  # linear tails
    z = torch.linspace(-3, 3, 13, dtype=torch.float64)
    zeros = torch.zeros(13, bins, dtype=torch.float64)
    y0, ld0 = rational_quadratic_spline(z, zeros, zeros, zeros[:, 1:], bound)
    torch.testing.assert_close(y0, z)
    torch.testing.assert_close(ld0, torch.zeros_like(z))


def test_a_spline_flow_with_a_deep_conditioner_trains():
    base = torch.randn(400, 6, generator=torch.Generator().manual_seed(0))
    data = base + 0.5 * base.roll(1, dims=1).square()  # not Gaussian: a spline has something to bend
    spec = ModelSpec(6, 3, 2, coupling="spline", bins=6, conditioner="mlp", hidden=[16, 16], init="zero")
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    flow = CouplingFlows(spec, [random_structure(6, 3, 2, np.random.default_rng(i)) for i in range(2)], gens)
    start = evaluate_bpd(flow, data)
    recipe = train_recipe(steps=60, max_lr=1e-2, optimizer="adam", schedule="constant", patience=None)
    result = train(flow, data, 64, recipe, gens)
    assert torch.isfinite(result.curve).all() and (evaluate_bpd(flow, data) < start - 0.05).all()
