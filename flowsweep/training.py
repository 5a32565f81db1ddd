"""The one training loop: minibatch SGD with a cyclic learning rate for K models at once.

Structure-search trials and final training both call :func:`train`. Each model draws
its own random minibatches from its own generator, so a model's numbers do not depend
on which other models share the batch. A model whose loss turns non-finite is marked
diverged and frozen (its gradients and momentum are zeroed from then on); the others
go on untouched.

Threads: every kernel runs on one thread (its operations are too small to split, and a
split operation stalls whenever another process holds a core). Instead the K models are
cut into ``schedule.workers`` contiguous shares, each trained by its own thread: the
fused kernel releases the GIL while it computes, and shares have nothing in common, so
the result does not depend on the number of workers.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from flowsweep.engine import BatchedCouplingFlow

__all__ = ["Schedule", "TrainResult", "train", "evaluate_bpd", "nats_to_bpd", "minibatches", "single_threaded"]

#: Minibatch indices are drawn this many steps at a time (fixed, so streams never depend on K).
_INDEX_CHUNK = 64
#: A worker thread gets a share only if the share has at least this much work per layer
#: (multiply-adds of its conditioners and constant transforms): below it, the threads
#: mostly queue for the GIL between small operations.
_MIN_SHARE_WORK = 50_000


@dataclass(frozen=True)
class Schedule:
    """SGD with momentum and PyTorch's ``CyclicLR``; ``step_size_up`` in SGD steps;
    ``workers`` threads share the K models."""

    steps: int
    base_lr: float
    max_lr: float
    step_size_up: int
    mode: str = "triangular"
    momentum: float = 0.9
    workers: int = 1

    @classmethod
    def from_config(cls, train_cfg, steps: Optional[int] = None) -> Schedule:
        return cls(
            steps=int(train_cfg.steps if steps is None else steps),
            base_lr=float(train_cfg.base_lr),
            max_lr=float(train_cfg.max_lr),
            step_size_up=int(train_cfg.step_size_up),
            mode=str(train_cfg.mode),
            momentum=float(train_cfg.momentum),
            workers=int(train_cfg.get("workers", 1)),
        )


@dataclass
class TrainResult:
    """Per-step minibatch bpd ``curve`` ``[steps, K]`` and the ``diverged`` flags ``[K]``."""

    curve: Tensor
    diverged: Tensor


def nats_to_bpd(nll: Tensor, d: int, log_det: float = 0.0) -> Tensor:
    """Mean negative log-likelihood per sample (nats, model space) → bits per dimension, raw units."""
    return (nll + log_det) / (d * math.log(2.0))


@contextmanager
def single_threaded() -> Iterator[None]:
    """Run torch kernels on one thread inside the block (the previous setting is restored)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def minibatches(data: Tensor, batch_size: int, steps: int, generators: Sequence[torch.Generator]) -> Iterator[Tensor]:
    """Yield ``steps`` minibatches ``[K, B, d]`` of rows of ``data``, one independent stream per generator.

    Model ``k``'s batches depend only on ``generators[k]``: the same alone or among many.
    """
    n = data.shape[0]
    for start in range(0, steps, _INDEX_CHUNK):
        chunk = min(_INDEX_CHUNK, steps - start)
        index = torch.stack([torch.randint(n, (chunk, batch_size), generator=g) for g in generators], dim=1)
        for step in range(chunk):
            # index_select on flat indices is several times faster than advanced indexing here
            yield data.index_select(0, index[step].flatten()).view(len(generators), batch_size, -1)


def _shares(flow: BatchedCouplingFlow, batch_size: int, workers: int) -> list[slice]:
    """At most ``workers`` contiguous, near-equal model ranges, each worth a thread."""
    per_model = batch_size * (flow.d + 2 * (flow.d - flow.m) * flow.m)
    count = max(1, min(workers, flow.k, flow.k * per_model // _MIN_SHARE_WORK))
    bounds = np.linspace(0, flow.k, count + 1).round().astype(int)
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def train(
    flow: BatchedCouplingFlow,
    data: Tensor,
    batch_size: int,
    schedule: Schedule,
    generators: Sequence[torch.Generator],
    log_det: float = 0.0,
    frozen: Optional[Tensor] = None,
) -> TrainResult:
    """Train all K models of ``flow`` on ``data`` ``[n, d]`` for ``schedule.steps`` steps.

    Arguments:
        generators: One per model; they drive the minibatch draws.
        log_det: Preprocessing log-determinant (nats per sample) so bpd is in raw units.
        frozen: Optional bool ``[K]`` of models not to train (they count as diverged).

    Returns:
        The minibatch bpd curve (``inf``/``nan`` where a model diverged) and the flags.
    """
    theta = flow.theta
    alive = torch.ones(flow.k, dtype=torch.bool) if frozen is None else ~frozen.clone()
    keep = alive.unsqueeze(1)  # a view: follows every in-place update of alive
    optimizer = torch.optim.SGD([theta], lr=schedule.base_lr, momentum=schedule.momentum)
    scheduler = torch.optim.lr_scheduler.CyclicLR(
        optimizer,
        base_lr=schedule.base_lr,
        max_lr=schedule.max_lr,
        step_size_up=schedule.step_size_up,
        mode=schedule.mode,
        cycle_momentum=False,
    )
    curve = torch.empty(schedule.steps, flow.k)
    grad, zero = torch.empty_like(theta), torch.zeros((), dtype=theta.dtype)
    ones = torch.ones(flow.k, dtype=theta.dtype)
    shares = _shares(flow, batch_size, schedule.workers)

    def step_share(models: slice, batch: Tensor, row: Tensor) -> None:
        nll, backward = flow.nll_step(batch[models], models)  # fused forward; backward without autograd
        row[models] = nll
        grad[models] = backward(ones[models])

    all_alive = bool(alive.all())
    with single_threaded(), ThreadPoolExecutor(len(shares) - 1 or 1) as pool:
        for step, batch in enumerate(minibatches(data, batch_size, schedule.steps, generators)):
            others = [pool.submit(step_share, models, batch, curve[step]) for models in shares[1:]]
            step_share(shares[0], batch, curve[step])
            for future in others:
                future.result()
            theta.grad = grad
            # Reading one flag per step costs one small op on a CPU (there is no device queue
            # to stall) and spares the usual step two passes over every parameter.
            if not (all_alive and bool(torch.isfinite(curve[step]).all())):
                alive &= torch.isfinite(curve[step])
                all_alive = False
                # Dead models get zero gradient and momentum (where, since NaN * 0 is NaN): frozen.
                theta.grad = torch.where(keep, grad, zero)
                buffer = optimizer.state.get(theta, {}).get("momentum_buffer")
                if buffer is not None:
                    buffer.mul_(keep)
            optimizer.step()
            scheduler.step()
    diverged = ~(alive & flow.finite_models())
    return TrainResult(curve=nats_to_bpd(curve, flow.d, log_det), diverged=diverged)


@torch.no_grad()
def evaluate_bpd(flow: BatchedCouplingFlow, data: Tensor, log_det: float = 0.0, chunk: int = 8192) -> Tensor:
    """Mean bpd (raw units) of each model on the whole of ``data`` ``[n, d]``: ``[K]``, ``inf`` if not finite."""
    total = torch.zeros(flow.k, dtype=torch.float64)
    with single_threaded():
        for start in range(0, data.shape[0], chunk):
            total += -flow.log_prob(data[start : start + chunk]).double().sum(1)
    bpd = nats_to_bpd(total / data.shape[0], flow.d, log_det)
    return torch.where(torch.isfinite(bpd), bpd, torch.full_like(bpd, math.inf))
