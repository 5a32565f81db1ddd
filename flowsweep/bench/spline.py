"""Spline flows: flowsweep's batched engine against a per-model zuko loop of the same architecture.

(a) trains K spline-coupling flows (``model.coupling=spline``) in one
:func:`flowsweep.training.train` call with the fused native spline (``train.kernel=native``),
(r) the same with the reference spline differentiated by autograd (``train.kernel=torch``);
(z) trains, one after another, K zuko flows of
``GeneralCouplingTransform`` layers with ``MonotonicRQSTransform`` (the same masks, bins,
bound and conditioner widths; zuko has no constant transform between them), Adam, the
same batch size, at each thread count from 1 to the bench's: a per-model loop of small
operations can run slower on more threads, and (a) is compared with zuko at its fastest.
Only the training loops are timed; the ratio is per model-step.
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
    """ms per model-step of (a), (r) and (z) for ``work``'s K structures, ``steps`` steps each; (z) at
    its fastest thread count (1 to torch's), the others below it."""
    spec = dataclasses.replace(work.spec, coupling="spline", conditioner="mlp" if hidden else "tanh",
                               hidden=hidden or (1,), bins=bins, tail_bound=bound)
    recipe = dataclasses.replace(work.recipe(steps), optimizer="adam", schedule="constant", max_lr=1e-3)
    batched = {}
    gpu = torch.cuda.is_available()
    for kernel in ("native", "torch") + (("cuda",) if gpu else ()):
        kernel_recipe = dataclasses.replace(recipe, kernel=kernel)
        train(CouplingFlows(spec, work.structures, work.generators()), work.data.train, work.batch_size,
              dataclasses.replace(kernel_recipe, steps=3), work.generators())  # warm up
        flow = CouplingFlows(spec, work.structures, work.generators())
        start = time.perf_counter()
        train(flow, work.data.train, work.batch_size, kernel_recipe, work.generators())
        batched[kernel] = time.perf_counter() - start
    threads = torch.get_num_threads()
    zuko_seconds = {}
    try:
        for count in range(1, threads + 1):
            torch.set_num_threads(count)
            zuko_seconds[count] = _zuko_loop(work, steps, hidden, bins, bound)
    finally:
        torch.set_num_threads(threads)
    fastest = min(zuko_seconds, key=zuko_seconds.__getitem__)
    model_steps = steps * work.k
    a, r = (1e3 * seconds / model_steps for seconds in (batched["native"], batched["torch"]))
    zuko = {count: 1e3 * seconds / model_steps for count, seconds in zuko_seconds.items()}
    rows = [(f"(a) flowsweep batched, K={work.k}, one train() call, fused native spline, {threads} thread(s)", a),
            ("(r) the same, reference spline (train.kernel=torch)", r),
            (f"(z) zuko, model by model, at its fastest: {fastest} thread(s)", zuko[fastest])]
    rows += [(f"zuko, model by model, at {count} thread(s)", ms) for count, ms in zuko.items() if count != fastest]
    if gpu:  # both sides on the GPU: (g) against zuko's loop there
        rows += [("(g) flowsweep batched on the GPU (train.kernel=cuda)", 1e3 * batched["cuda"] / model_steps),
                 ("(zg) zuko, model by model, on the GPU",
                  1e3 * _zuko_loop(work, steps, hidden, bins, bound, "cuda") / model_steps)]
    return pd.DataFrame({
        "engine": [name for name, _ in rows],
        "model-steps": [model_steps] * len(rows),
        "ms / model-step": [round(ms, 3) for _, ms in rows],
        "speed-up of (a)": [round(ms / a, 1) for _, ms in rows],
    })


def _zuko_loop(work: Workload, steps: int, hidden: tuple[int, ...], bins: int, bound: float,
               device: str = "cpu") -> float:
    """Seconds to train ``work``'s K zuko flows one after another, ``steps`` Adam steps each, on ``device``."""
    seconds = 0.0
    for k, generator in enumerate(work.generators()):
        model = _zuko_flow(work, k, hidden, bins, bound).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        batches = [gather(work.data.train, rows)[0].to(device)
                   for rows in minibatch_rows(work.data.train.shape[0], work.batch_size, steps, [generator])]
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for batch in batches:
            loss = -model().log_prob(batch).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()
        seconds += time.perf_counter() - start
    return seconds
