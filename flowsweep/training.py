"""The one training loop: minibatch gradient descent for K models at once.

Structure-search trials and final training both call :func:`train`. Each model draws
its own random minibatches from its own generator, so a model's numbers do not depend
on which other models share the batch. A model whose loss turns non-finite is marked
diverged and frozen (its parameters stay as they were); the others go on untouched.
With a validation split and ``patience``, a model whose validation bpd has not improved
for ``patience`` evaluations stops too, and every model ends with the parameters of its
best evaluation (early stopping, per model).

The gradient comes from the native kernel where it covers the model (float32, see
:func:`flowsweep.native.covers`) and ``kernel=native``, else from autograd through the
reference model, whose spline couplings then run the fused native spline
(:mod:`flowsweep.native.spline`) with ``kernel=native``. With ``kernel=cuda`` the reference
model's forward and backward run on a CUDA GPU (a copy of the moving models' parameters goes
there each step, their gradients come back); the parameters, the optimizer and all the
bookkeeping stay on the CPU, so nothing else in a job changes. Optimizers and schedules are
PyTorch's; every one of them works element-wise, so model ``k``'s row of parameters evolves
as it would alone.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import torch
from torch import Tensor

from flowsweep.config import CHOICES
from flowsweep.model import CouplingFlows
from flowsweep.model.spline import SplineKernel, spline_kernel
from flowsweep.native import NativeStep, covers, native_available, native_log_prob
from flowsweep.native.spline import native_spline

__all__ = ["OPTIMIZERS", "SCHEDULES", "Recipe", "TrainResult", "make_optimizer", "train", "evaluate_bpd", "nats_to_bpd",
           "minibatch_rows", "gather", "torch_threads", "row_bpd", "mean_bpd"]

OPTIMIZERS = CHOICES["train.optimizer"]
#: ``cyclic``: PyTorch's ``CyclicLR`` between ``base_lr`` and ``max_lr`` (Smith 2017, the
#: paper's schedule); ``constant``: ``max_lr`` throughout; ``cosine``: from ``max_lr`` down to
#: ``base_lr`` over the run.
SCHEDULES = CHOICES["train.schedule"]
#: Minibatch indices are drawn this many steps at a time (fixed, so streams never depend on K).
_INDEX_CHUNK = 64


@dataclass(frozen=True)
class Recipe:
    """How models are trained (the ``train`` config node, or a search's trial recipe).

    Types only: every value comes from ``conf/config.yaml``'s ``train`` node (or a preset's),
    through :meth:`from_config`; the keys' meaning is documented there and in docs/configuration.md.
    """

    steps: int
    max_lr: float
    base_lr: float
    optimizer: str
    schedule: str
    step_size_up: int
    mode: str
    momentum: float
    weight_decay: float
    #: Largest gradient norm per model (null: no clipping).
    clip_norm: Optional[float]
    #: Steps between validation evaluations (the ``val_bpd`` curve, early stopping).
    eval_every: int
    #: Early stopping: evaluations without improvement before a model stops (null: off).
    patience: Optional[int]
    threads: int
    kernel: str

    @classmethod
    def from_config(cls, node: Any, **changes: Any) -> Recipe:
        """The recipe of a ``train`` config node (a DictConfig or a mapping); ``changes`` override it."""
        values = {f.name: node[f.name] for f in fields(cls) if f.name in node}
        values.update(changes)
        return cls(**values)


@dataclass
class TrainResult:
    """Per-step minibatch bpd ``curve`` ``[steps, K]`` (non-finite where a model diverged, NaN
    after it stopped; fewer steps where every model stopped), the validation bpd ``val_curve``
    ``[evaluations, K]`` at the steps ``val_steps`` (0, the start, first with early stopping),
    the ``diverged`` flags ``[K]`` and the ``steps`` ``[K]`` each model trained (its model-steps:
    fewer where it diverged or stopped early)."""

    curve: Tensor
    diverged: Tensor
    val_curve: Tensor
    val_steps: list[int]
    steps: Tensor


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


def make_optimizer(params: Iterable[Tensor], recipe: Recipe) -> tuple[torch.optim.Optimizer,
                                                                      torch.optim.lr_scheduler.LRScheduler]:
    """PyTorch's optimizer and learning-rate scheduler of ``recipe`` for ``params``."""
    if recipe.optimizer == "adam":
        optimizer = torch.optim.Adam(params, lr=recipe.max_lr, weight_decay=recipe.weight_decay)
    else:
        optimizer = torch.optim.SGD(params, lr=recipe.max_lr, momentum=recipe.momentum,
                                    weight_decay=recipe.weight_decay)
    if recipe.schedule == "cyclic":
        scheduler = torch.optim.lr_scheduler.CyclicLR(
            optimizer, base_lr=recipe.base_lr, max_lr=recipe.max_lr, step_size_up=recipe.step_size_up,
            mode=recipe.mode, cycle_momentum=False)
    elif recipe.schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=recipe.steps, eta_min=recipe.base_lr)
    else:
        scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    return optimizer, scheduler


def _gradient_source(flow: CouplingFlows, data: Tensor, recipe: Recipe
                     ) -> tuple[Callable[[Tensor, Optional[Tensor]], tuple[Tensor, Tensor]], bool]:
    """``(step, native)``: ``step(rows, moving) -> (nll [K], grad [K, P])`` from the native kernel
    (``native`` true) or from autograd through the reference model. ``moving`` (bool ``[K]``, or
    None for all) names the models that still train: the others' nll is NaN and their gradient 0,
    and neither path computes them."""
    if recipe.kernel == "native" and data.dtype == torch.float32 and covers(flow.spec) and native_available():
        kernels: dict[int, NativeStep] = {}  # by model count: its output buffers are made once

        def kernel(n: int) -> NativeStep:
            if n not in kernels:
                kernels[n] = NativeStep(flow.spec, n, recipe.threads)
            return kernels[n]

        def native_part(index: Optional[Tensor], rows: Tensor) -> tuple[Tensor, Tensor]:
            if index is None:
                return kernel(flow.k)(data, rows, flow.theta, flow.perm)
            perm: Tensor = flow.perm  # a registered buffer
            return kernel(len(index))(data, rows, flow.theta.detach()[index], perm[index])

        return _moving_only(flow, native_part), True

    device = torch.device("cuda" if recipe.kernel == "cuda" else "cpu")
    return _moving_only(flow, _autograd_part(flow, data, device, _fused_spline(recipe.kernel))), False


def _autograd_part(flow: CouplingFlows, data: Tensor, device: torch.device, fused: Optional[SplineKernel]
                   ) -> Callable[[Optional[Tensor], Tensor], tuple[Tensor, Tensor]]:
    """The part step of :func:`_moving_only` by autograd through the reference model on ``device``.

    On the CPU all K models train in ``flow`` itself, and the moving ones, while some have
    stopped, in a flow of their own (made again when the set changes). On another device the
    data is copied there once and the models' parameters every step, into such a flow there;
    their nll and gradient come back to the CPU, where the optimizer keeps ``flow.theta``."""
    on_device = data.to(device)
    parts: dict[tuple[int, ...], CouplingFlows] = {}  # a flow of the moving models, while they are the same

    def autograd_part(index: Optional[Tensor], rows: Tensor) -> tuple[Tensor, Tensor]:
        part = flow
        if index is not None or device.type != "cpu":
            key = tuple(range(flow.k)) if index is None else tuple(index.tolist())
            if key not in parts:
                parts.clear()
                parts[key] = flow.select(key).to(device)
            part = parts[key]
            with torch.no_grad():
                part.theta.copy_(flow.theta.detach() if index is None else flow.theta.detach()[index])
        part.theta.grad = None
        with spline_kernel(fused):
            nll = part.nll(gather(on_device, rows.to(device)))
        # Each model's loss depends on its own row only: one backward gives every model's gradient.
        torch.where(torch.isfinite(nll), nll, 0.0).sum().backward()
        assert part.theta.grad is not None  # theta is a leaf that the loss reaches
        return nll.detach().cpu(), part.theta.grad.cpu()

    return autograd_part


def _fused_spline(kernel: str) -> Optional[SplineKernel]:
    """The native spline for the reference model's spline couplings where ``kernel`` is ``native``."""
    return native_spline if kernel == "native" else None


def _moving_only(flow: CouplingFlows, part_step: Callable[[Optional[Tensor], Tensor], tuple[Tensor, Tensor]]
                 ) -> Callable[[Tensor, Optional[Tensor]], tuple[Tensor, Tensor]]:
    """``step(rows, moving)`` from ``part_step(index, rows)``, which computes the models ``index``
    (``None``: all) on their rows: models stopped early, pruned or diverged cost nothing. Each
    model's step depends on its own parameters and rows alone, so the moving models' numbers are
    the same computed alone; the others get NaN and a zero gradient."""

    def step(rows: Tensor, moving: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        if moving is None or bool(moving.all()):
            return part_step(None, rows)
        index = moving.nonzero().squeeze(1)
        nll = torch.full((flow.k,), math.nan, dtype=flow.theta.dtype)
        grad = torch.zeros(flow.theta.shape, dtype=flow.theta.dtype)
        if len(index):
            nll[index], grad[index] = part_step(index, rows[index])
        return nll, grad

    return step


def train(flow: CouplingFlows, data: Tensor, batch_size: int, recipe: Recipe, generators: Sequence[torch.Generator],
          log_det: float = 0.0, frozen: Optional[Tensor] = None, valid: Optional[Tensor] = None,
          on_progress: Optional[Callable[[int, Tensor], None]] = None,
          prune: Optional[Callable[[int, Tensor, Tensor], Tensor]] = None) -> TrainResult:
    """Train all K models of ``flow`` on ``data`` ``[n, d]`` for ``recipe.steps`` steps.

    Arguments:
        generators: One per model; they drive the minibatch draws.
        log_det: Preprocessing log-determinant (nats per sample) so bpd is in raw units.
        frozen: Optional bool ``[K]`` of models not to train (they count as diverged).
        valid: Validation rows ``[v, d]``, evaluated every ``recipe.eval_every`` steps (and
            for early stopping with ``recipe.patience``); ``None`` or no rows: never.
        on_progress: Called after every step with the number of steps done and the NLL
            curve ``[steps, K]`` (nats; rows past that number are not filled yet), so a
            caller can show training as it goes; it decides itself how often to act.
        prune: Called after every validation evaluation with the number of steps done, each
            model's best validation bpd so far ``[K]`` and which models still train ``[K]``;
            returns the models ``[K]`` (bool) to stop there, as early stopping stops them (a
            race: successive halving inside one training, :mod:`flowsweep.search.halving`).

    A model that has stopped (early, pruned or diverged) costs nothing more on the native
    kernel, which trains only the models still moving; its curve is NaN from then on.
    """
    theta = flow.theta
    k = flow.k
    alive = torch.ones(k, dtype=torch.bool) if frozen is None else ~frozen.clone()
    moving = alive.clone()  # alive and not stopped early
    # Steps each model trained, set where it stops: the usual step pays nothing for the count.
    trained = torch.where(alive, recipe.steps, 0)
    resting = theta.detach().clone()  # what a model that stops moving keeps
    optimizer, scheduler = make_optimizer([theta], recipe)
    curve = torch.empty(recipe.steps, k, dtype=theta.dtype)
    checking = valid is not None and len(valid) > 0
    val_curve, val_steps = [], []
    best_val = torch.full((k,), math.inf, dtype=torch.float64)
    best_theta, since_best = theta.detach().clone(), torch.zeros(k, dtype=torch.long)
    step_of, native = _gradient_source(flow, data, recipe)
    all_moving = bool(moving.all())
    # The models that trained up to the last evaluation: a model's parameters change only
    # until the evaluation after it stopped, so only those are evaluated again.
    live = torch.ones(k, dtype=torch.bool)
    if checking and recipe.patience is not None:
        # Step 0 counts: where no training beats the start (a whitened Gaussian, say), keep it.
        best_val = evaluate_bpd(flow, valid, log_det, threads=recipe.threads, kernel=recipe.kernel)
        best_theta = theta.detach().clone()
        val_curve.append(best_val)
        val_steps.append(0)
    # The native kernel runs its own threads; torch's OpenMP workers would spin against them.
    with torch_threads(1 if native else recipe.threads):
        for step, rows in enumerate(minibatch_rows(data.shape[0], batch_size, recipe.steps, generators)):
            nll, grad = step_of(rows, None if all_moving else moving)
            curve[step] = nll
            finite = torch.isfinite(nll)
            # One flag per step: spares the usual step the masking passes over every parameter.
            if not (all_moving and bool(finite.all())):
                newly_dead = moving & ~finite
                trained[newly_dead] = step + 1
                alive &= finite | ~moving
                moving &= finite
                resting[newly_dead] = theta.detach()[newly_dead]
                all_moving = False
            if not all_moving:  # every model moving: the mask would be a copy
                grad = torch.where(moving.unsqueeze(1), grad, 0.0)
            if recipe.clip_norm is not None:
                norm = grad.norm(dim=1, keepdim=True)
                grad = grad * (recipe.clip_norm / norm).clamp(max=1.0).nan_to_num(1.0)
            theta.grad = grad
            optimizer.step()
            scheduler.step()
            if not all_moving:
                with torch.no_grad():
                    theta.copy_(torch.where(moving.unsqueeze(1), theta, resting))
            if on_progress is not None:
                on_progress(step + 1, curve)
            if checking and ((step + 1) % recipe.eval_every == 0 or step + 1 == recipe.steps):
                values = _evaluate_changed(flow, valid, log_det, recipe, moving | live, val_curve[-1] if val_curve else None)
                live = moving.clone()
                val_curve.append(values)
                val_steps.append(step + 1)
                better = values < best_val
                best_val = torch.where(better, values, best_val)
                best_theta[better] = theta.detach()[better]
                since_best = torch.where(better, 0, since_best + 1)
                stopping = torch.zeros_like(moving)
                if recipe.patience is not None:
                    stopping |= moving & (since_best >= recipe.patience)
                if prune is not None:
                    stopping |= moving & prune(step + 1, best_val, moving.clone())
                if stopping.any():  # a stopped model keeps its best parameters
                    trained[stopping] = step + 1
                    resting[stopping] = best_theta[stopping]
                    moving &= ~stopping
                    all_moving = False
                    if not moving.any():
                        curve = curve[: step + 1]
                        break
    if checking and recipe.patience is not None:
        with torch.no_grad():
            keep = (alive & torch.isfinite(best_val)).unsqueeze(1)
            theta.copy_(torch.where(keep, best_theta, theta))
    diverged = ~(alive & flow.finite_models())
    val = torch.stack(val_curve) if val_curve else torch.empty(0, k, dtype=torch.float64)
    return TrainResult(curve=nats_to_bpd(curve, flow.d, log_det), diverged=diverged, val_curve=val, val_steps=val_steps,
                       steps=trained)


def _evaluate_changed(flow: CouplingFlows, valid: Tensor, log_det: float, recipe: Recipe, changed: Tensor,
                      last: Optional[Tensor]) -> Tensor:
    """:func:`evaluate_bpd` of the ``changed`` models ``[K]``; the others keep their ``last`` values."""
    if last is None or bool(changed.all()):
        return evaluate_bpd(flow, valid, log_det, threads=recipe.threads, kernel=recipe.kernel)
    values = last.clone()
    index = changed.nonzero().squeeze(1).tolist()
    if index:
        values[index] = evaluate_bpd(flow.select(index), valid, log_det, threads=recipe.threads, kernel=recipe.kernel)
    return values


@torch.no_grad()
def row_bpd(flow: CouplingFlows, data: Tensor, log_det: float = 0.0, chunk: int = 8192, threads: int = 1,
            kernel: str = "native") -> Tensor:
    """The bpd (raw units) of every row of ``data`` ``[n, d]`` under each model: ``[K, n]`` float64.

    With ``kernel="native"``, float32 data and a model the native kernel covers, its forward
    pass scores the rows (about 20x the reference's speed per row; the two round differently);
    with ``kernel="cuda"`` the reference model on the GPU; otherwise the reference model on
    the CPU, ``chunk`` rows at a time. ``threads``: the native
    kernel's threads, or torch's meanwhile (the previous setting is restored)."""
    if kernel == "native" and data.dtype == torch.float32 and flow.theta.dtype == torch.float32 \
            and covers(flow.spec) and native_available():
        perm: Tensor = flow.perm  # a registered buffer
        logp = native_log_prob(flow.spec, data, flow.theta, perm, threads)
        return nats_to_bpd(-logp.double(), flow.d, log_det)
    # With kernel=cuda a copy of the models on the GPU scores the rows there.
    device = torch.device("cuda" if kernel == "cuda" else "cpu")
    scorer = flow if device.type == "cpu" else flow.select(range(flow.k)).to(device)
    with torch_threads(threads), spline_kernel(_fused_spline(kernel)):
        nll = torch.cat([-scorer.log_prob(data[start : start + chunk].to(device)).double().cpu()
                         for start in range(0, data.shape[0], chunk)], dim=1)
    return nats_to_bpd(nll, flow.d, log_det)


def evaluate_bpd(flow: CouplingFlows, data: Tensor, log_det: float = 0.0, chunk: int = 8192,
                 threads: int = 1, kernel: str = "native") -> Tensor:
    """Mean bpd (raw units) of each model on the whole of ``data`` ``[n, d]``: ``[K]`` float64,
    ``inf`` where not finite (:func:`row_bpd` says which kernel scores the rows)."""
    return mean_bpd(row_bpd(flow, data, log_det, chunk, threads, kernel))


def mean_bpd(rows: Tensor) -> Tensor:
    """Each model's mean of :func:`row_bpd`'s ``[K, n]``: ``[K]``, ``inf`` where not finite."""
    bpd = rows.mean(1)
    return torch.where(torch.isfinite(bpd), bpd, torch.full_like(bpd, math.inf))
