"""Side by side: (a) flowsweep's batched engine, (b) the usual way, (c) nflows.

All three train the same K models (same structures, same initial parameters, same
minibatches, the job's optimizer and schedule) for the same number of steps; (b) and (c)
train their models one after another, as one would without a batched engine.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from flowsweep.bench.reference import UsualFlow, copy_into_nflows, copy_into_usual, nflows_flow
from flowsweep.bench.workload import Workload, best_of
from flowsweep.model import CouplingFlows
from flowsweep.training import Recipe, evaluate_bpd, gather, make_optimizer, minibatch_rows, nats_to_bpd, train

__all__ = ["EngineRun", "run_batched", "run_sequential", "compare"]

#: Steps run once before any timing (first-call allocations, lazy initialisation).
_WARMUP_STEPS = 5


@dataclass
class EngineRun:
    """One engine's timing and what it reached: minibatch bpd ``curve [steps, K]``, final
    bpd on the whole training split ``final [K]``."""

    name: str
    seconds: float
    model_steps: int
    curve: np.ndarray
    final: np.ndarray

    @property
    def ms_per_model_step(self) -> float:
        return 1e3 * self.seconds / self.model_steps


def run_batched(work: Workload, initial: CouplingFlows, steps: int, repeats: int) -> EngineRun:
    """(a): all K models in one :func:`flowsweep.training.train` call, best of ``repeats``."""
    train(work.fresh(initial), work.data.train, work.batch_size, work.recipe(_WARMUP_STEPS), work.generators())

    def once() -> tuple[CouplingFlows, np.ndarray]:
        flow = work.fresh(initial)
        result = train(flow, work.data.train, work.batch_size, work.recipe(steps), work.generators(),
                       work.data.log_det)
        return flow, result.curve.numpy()

    seconds, (flow, curve) = best_of(repeats, once)
    final = evaluate_bpd(flow, work.data.train, work.data.log_det).numpy()
    threads = "1 thread" if work.threads == 1 else f"{work.threads} threads"
    label = f"(a) flowsweep batched engine, {work.cfg.train.kernel} kernel, {threads}"
    return EngineRun(label, seconds, steps * work.k, curve, final)


def _minibatches(data: Tensor, batch_size: int, steps: int, generator: torch.Generator) -> Iterator[Tensor]:
    """One model's minibatches ``[1, B, d]``, the same rows :func:`flowsweep.training.train` draws for it."""
    for rows in minibatch_rows(data.shape[0], batch_size, steps, [generator]):
        yield gather(data, rows)


def _train_one(model: nn.Module, batches: Iterator[Tensor], recipe: Recipe) -> list[float]:
    """The usual loop: one model, ``loss.backward()``, ``optimizer.step()``, ``scheduler.step()``;
    returns the minibatch loss (nats) per step. The job's optimizer and schedule."""
    optimizer, scheduler = make_optimizer(model.parameters(), recipe)
    curve = []
    for batch in batches:
        loss = -model.log_prob(batch[0]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        curve.append(loss.item())  # what a usual loop logs each step
    return curve


def run_sequential(name: str, work: Workload, initial: CouplingFlows, steps: int,
                   build: Callable[[int], nn.Module]) -> EngineRun:
    """(b) or (c): the K models one after another; ``build(k)`` returns model ``k`` with its
    initial parameters. Only the training loops are timed."""
    data = work.data
    _train_one(build(0), _minibatches(data.train, work.batch_size, _WARMUP_STEPS, work.generators()[0]),
               work.recipe(_WARMUP_STEPS))
    models = [build(k) for k in range(work.k)]
    curves, seconds = [], 0.0
    for model, generator in zip(models, work.generators()):
        batches = _minibatches(data.train, work.batch_size, steps, generator)
        start = time.perf_counter()
        curves.append(_train_one(model, batches, work.recipe(steps)))
        seconds += time.perf_counter() - start
    with torch.no_grad():
        final = torch.stack([-model.log_prob(data.train).double().mean() for model in models])
    curve = nats_to_bpd(torch.tensor(curves, dtype=torch.float64).T, data.d, data.log_det).numpy()
    return EngineRun(name, seconds, steps * work.k, curve, nats_to_bpd(final, data.d, data.log_det).numpy())


def _engines(work: Workload, initial: CouplingFlows, steps: int, repeats: int, nflows: bool) -> list[EngineRun]:
    dtype = initial.theta.dtype
    runs = [run_batched(work, initial, steps, repeats),
            run_sequential("(b) usual way: nn.Module per model", work, initial, steps,
                           lambda k: copy_into_usual(UsualFlow(work.structures[k]).to(dtype), initial, k))]
    if nflows:
        runs.append(run_sequential("(c) nflows, model by model", work, initial, steps,
                                   lambda k: copy_into_nflows(nflows_flow(work.structures[k]).to(dtype), initial, k)))
    return runs


def _agreement(runs: list[EngineRun], precision: str) -> pd.DataFrame:
    batched = runs[0]
    return pd.DataFrame({
        "versus (a)": [f"{r.name[:3]}, {precision}, {len(r.curve)} steps" for r in runs[1:]],
        "median |Δ| minibatch bpd": [float(np.median(np.abs(r.curve - batched.curve))) for r in runs[1:]],
        "max |Δ| minibatch bpd": [_max_abs(r.curve, batched.curve) for r in runs[1:]],
        "max |Δ| final train bpd": [_max_abs(r.final, batched.final) for r in runs[1:]],
        "final train bpd (mean)": [round(float(np.mean(r.final)), 5) for r in runs[1:]],
    })


def compare(work: Workload, steps: int, repeats: int, nflows: bool = True,
            check_steps: int = 20) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Time (a), (b) and (c) on ``work`` (float32, as jobs train); returns the timing table and
    the agreement table: the timed runs' bpd, and the bpd of all three trained again for
    ``check_steps`` steps in float64, where rounding cannot hide a difference in the model."""
    runs = _engines(work, work.initial_flow(), steps, repeats, nflows)
    batched = runs[0]
    timing = pd.DataFrame({
        "engine": [r.name for r in runs],
        "model-steps": [r.model_steps for r in runs],
        "wall s": [round(r.seconds, 2) for r in runs],
        "ms / model-step": [round(r.ms_per_model_step, 3) for r in runs],
        "× slower than (a)": [round(r.ms_per_model_step / batched.ms_per_model_step, 1) for r in runs],
    })
    exact = work.in_dtype(torch.float64)
    checked = _engines(exact, exact.initial_flow().double(), check_steps, 1, nflows)
    return timing, pd.concat([_agreement(runs, "float32"), _agreement(checked, "float64")], ignore_index=True)


def _max_abs(a: np.ndarray, b: np.ndarray) -> Optional[float]:
    diff = float(np.max(np.abs(a - b)))
    return diff if math.isfinite(diff) else None
