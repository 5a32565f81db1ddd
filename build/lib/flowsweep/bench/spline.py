"""Spline flows: flowsweep's batched engine against a per-model zuko loop of the same architecture.

(a) trains K spline-coupling flows (``model.coupling=spline``) in one
:func:`flowsweep.training.train` call with the fused native spline (``train.kernel=native``),
(r) the same with the reference spline differentiated by autograd (``train.kernel=torch``);
(z) trains, one after another, K zuko flows of
``GeneralCouplingTransform`` layers with ``MonotonicRQSTransform`` (the same masks, bins,
bound and conditioner widths; zuko has no constant transform between them), Adam, the
same batch size. Only the training loops are timed; the ratio is per model-step.
"""

from __future__ import annotations

import dataclasses
import time

import pandas as pd
import torch

from flowsweep.bench.workload import Workload
from flowsweep.model import CouplingFlows
from flowsweep.training import gather, minibatch_rows, train

__all__ = ["spline_speed"]


def _zuko_flow(work: Workload, k: int, hidden: tuple[int, ...], bins: int, bound: float) -> torch.nn.Module:
    from functools import partial

    from zuko.distributions import DiagNormal
    from zuko.flows.coupling import GeneralCouplingTransform
    from zuko.lazy import Flow, UnconditionalDistribution
    from zuko.transforms import MonotonicRQSTransform

    d = work.data.d
    layers = []
    for conditioning in work.structures[k].conditioning:
        mask = torch.zeros(d, dtype=torch.bool)
        mask[list(conditioning)] = True  # zuko: True conditions
        layers.append(GeneralCouplingTransform(d, mask=mask, univariate=partial(MonotonicRQSTransform, bound=bound),
                                               shapes=[(bins,), (bins,), (bins - 1,)], hidden_features=hidden))
    return Flow(layers, UnconditionalDistribution(DiagNormal, torch.zeros(d), torch.ones(d), buffer=True))


def spline_speed(work: Workload, steps: int, hidden: tuple[int, ...] = (64, 64), bins: int = 8,
                 bound: float = 5.0) -> pd.DataFrame:
    """ms per model-step of (a) and (z) for ``work``'s K structures, ``steps`` steps each."""
    spec = dataclasses.replace(work.spec, coupling="spline", conditioner="mlp" if hidden else "tanh",
                               hidden=hidden or (1,), bins=bins, tail_bound=bound)
    recipe = dataclasses.replace(work.recipe(steps), optimizer="adam", schedule="constant", max_lr=1e-3)
    batched = {}
    for kernel in ("native", "torch"):
        kernel_recipe = dataclasses.replace(recipe, kernel=kernel)
        train(CouplingFlows(spec, work.structures, work.generators()), work.data.train, work.batch_size,
              dataclasses.replace(kernel_recipe, steps=3), work.generators())  # warm up
        flow = CouplingFlows(spec, work.structures, work.generators())
        start = time.perf_counter()
        train(flow, work.data.train, work.batch_size, kernel_recipe, work.generators())
        batched[kernel] = time.perf_counter() - start
    zuko_seconds = 0.0
    for k, generator in enumerate(work.generators()):
        model = _zuko_flow(work, k, hidden, bins, bound)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        batches = [gather(work.data.train, rows)[0]
                   for rows in minibatch_rows(work.data.train.shape[0], work.batch_size, steps, [generator])]
        start = time.perf_counter()
        for batch in batches:
            loss = -model().log_prob(batch).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        zuko_seconds += time.perf_counter() - start
    model_steps = steps * work.k
    a, r, z = (1e3 * seconds / model_steps for seconds in (batched["native"], batched["torch"], zuko_seconds))
    return pd.DataFrame({
        "engine": [f"(a) flowsweep batched, K={work.k}, one train() call, fused native spline",
                   "(r) the same, reference spline (train.kernel=torch)", "(z) zuko, model by model"],
        "model-steps": [model_steps] * 3,
        "ms / model-step": [round(a, 3), round(r, 3), round(z, 3)],
        "speed-up of (a)": [1.0, round(r / a, 1), round(z / a, 1)],
    })
