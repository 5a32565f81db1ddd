"""The one training loop: minibatch SGD with a cyclic learning rate for K models at once.

Structure-search trials and final training both call :func:`train`. Each model draws
its own random minibatches from its own generator, so a model's numbers do not depend
on which other models share the batch. A model whose loss turns non-finite is marked
diverged and frozen (its gradients and momentum are zeroed from then on); the others
go on untouched.

Threads: training runs torch's kernels on ``schedule.threads`` threads (``train.threads``,
default 1) and restores the previous setting afterwards. On the 2-core box two threads
make an idle machine's step about 1.2x faster, but a split operation waits for its
slowest thread, so when another process holds a core, a step becomes tens of times slower.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence

import torch
from torch import Tensor

from flowsweep.engine import BatchedCouplingFlow
from flowsweep.native import native_available

__all__ = ["Schedule", "TrainResult", "train", "evaluate_bpd", "nats_to_bpd", "minibatches", "minibatch_rows", "gather",
           "torch_threads"]

#: Minibatch indices are drawn this many steps at a time (fixed, so streams never depend on K).
_INDEX_CHUNK = 64


@dataclass(frozen=True)
class Schedule:
    """SGD with momentum and PyTorch's ``CyclicLR``; ``step_size_up`` in SGD steps;
    ``threads`` for torch's kernels."""

    steps: int
    base_lr: float
    max_lr: float
    step_size_up: int
    mode: str = "triangular"
    momentum: float = 0.9
    threads: int = 1
    kernel: str = "torch"

    @classmethod
    def from_config(cls, train_cfg, steps: Optional[int] = None) -> Schedule:
        return cls(
            steps=int(train_cfg.steps if steps is None else steps),
            base_lr=float(train_cfg.base_lr),
            max_lr=float(train_cfg.max_lr),
            step_size_up=int(train_cfg.step_size_up),
            mode=str(train_cfg.mode),
            momentum=float(train_cfg.momentum),
            threads=int(train_cfg.get("threads", 1)),
            kernel=str(train_cfg.get("kernel", "torch")),
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
def torch_threads(threads: int) -> Iterator[None]:
    """Run torch's kernels on ``threads`` threads inside the block (the previous setting is restored)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def minibatch_rows(n: int, batch_size: int, steps: int, generators: Sequence[torch.Generator]) -> Iterator[Tensor]:
    """Yield ``steps`` row indices ``[K, B]`` into ``n`` rows, one independent stream per generator.

    Model ``k``'s batches depend only on ``generators[k]``: the same alone or among many.
    """
    for start in range(0, steps, _INDEX_CHUNK):
        chunk = min(_INDEX_CHUNK, steps - start)
        index = torch.stack([torch.randint(n, (chunk, batch_size), generator=g) for g in generators], dim=1)
        yield from index.unbind(0)


def gather(data: Tensor, rows: Tensor) -> Tensor:
    """The minibatches ``[K, B, d]`` of :func:`minibatch_rows`' ``rows`` ``[K, B]``."""
    # index_select on flat indices is several times faster than advanced indexing here
    return data.index_select(0, rows.flatten()).view(*rows.shape, -1)


def minibatches(data: Tensor, batch_size: int, steps: int, generators: Sequence[torch.Generator]) -> Iterator[Tensor]:
    """Yield ``steps`` minibatches ``[K, B, d]`` of rows of ``data`` (see :func:`minibatch_rows`)."""
    for rows in minibatch_rows(data.shape[0], batch_size, steps, generators):
        yield gather(data, rows)


def train(
    flow: BatchedCouplingFlow,
    data: Tensor,
    batch_size: int,
    schedule: Schedule,
    generators: Sequence[torch.Generator],
    log_det: float = 0.0,
    frozen: Optional[Tensor] = None,
    on_progress: Optional[Callable[[int, Tensor], None]] = None,
) -> TrainResult:
    """Train all K models of ``flow`` on ``data`` ``[n, d]`` for ``schedule.steps`` steps.

    Arguments:
        generators: One per model; they drive the minibatch draws.
        log_det: Preprocessing log-determinant (nats per sample) so bpd is in raw units.
        frozen: Optional bool ``[K]`` of models not to train (they count as diverged).
        on_progress: Called after every step with the number of steps done and the NLL
            curve ``[steps, K]`` (nats; rows past that number are not filled yet), so a
            caller can show training as it goes; it decides itself how often to act.

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
    curve = torch.empty(schedule.steps, flow.k, dtype=theta.dtype)
    zero, ones = torch.zeros((), dtype=theta.dtype), torch.ones(flow.k, dtype=theta.dtype)
    all_alive = bool(alive.all())
    native = schedule.kernel == "native" and data.dtype == torch.float32 and native_available()
    # The native kernel runs its own threads; torch's OpenMP workers would spin against them.
    with torch_threads(1 if native else schedule.threads):
        for step, rows in enumerate(minibatch_rows(data.shape[0], batch_size, schedule.steps, generators)):
            # fused forward and its backward pass, without autograd; the native kernel reads
            # the rows in place, PyTorch's needs them gathered
            if native:
                nll, backward = flow.native_step(data, rows, schedule.threads)
            else:
                nll, backward = flow.nll_step(gather(data, rows))
            curve[step] = nll
            theta.grad = backward(ones)
            # Reading one flag per step costs one small op on a CPU (there is no device queue
            # to stall) and spares the usual step two passes over every parameter.
            if not (all_alive and bool(torch.isfinite(nll).all())):
                alive &= torch.isfinite(nll)
                all_alive = False
                # Dead models get zero gradient and momentum (where, since NaN * 0 is NaN): frozen.
                theta.grad = torch.where(keep, theta.grad, zero)
                buffer = optimizer.state.get(theta, {}).get("momentum_buffer")
                if buffer is not None:
                    buffer.mul_(keep)
            optimizer.step()
            scheduler.step()
            if on_progress is not None:
                on_progress(step + 1, curve)
    diverged = ~(alive & flow.finite_models())
    return TrainResult(curve=nats_to_bpd(curve, flow.d, log_det), diverged=diverged)


@torch.no_grad()
def evaluate_bpd(flow: BatchedCouplingFlow, data: Tensor, log_det: float = 0.0, chunk: int = 8192,
                 threads: int = 1) -> Tensor:
    """Mean bpd (raw units) of each model on the whole of ``data`` ``[n, d]``: ``[K]``, ``inf`` if not finite.

    ``threads``: torch's threads meanwhile (the previous setting is restored).
    """
    total = torch.zeros(flow.k, dtype=torch.float64)
    with torch_threads(threads):
        for start in range(0, data.shape[0], chunk):
            total += -flow.log_prob(data[start : start + chunk]).double().sum(1)
    bpd = nats_to_bpd(total / data.shape[0], flow.d, log_det)
    return torch.where(torch.isfinite(bpd), bpd, torch.full_like(bpd, math.inf))
