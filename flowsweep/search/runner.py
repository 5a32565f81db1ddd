"""Runs many structure searches side by side, their trials trained as one batch.

Each iteration asks every optimizer for its trials, builds one
:class:`~flowsweep.model.CouplingFlows` holding all of them, trains it with the
shared training loop for ``steps_per_trial`` steps, and tells every optimizer its
values. Every trial has its own random stream (derived from its instance's seed and
its trial number), so a search gives the same result alone or among many.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

from flowsweep.data import Dataset
from flowsweep.model import CouplingFlows, ModelSpec
from flowsweep.search.base import StructureOptimizer, Trial, TrialState
from flowsweep.seeding import derive_seed, torch_generator
from flowsweep.training import Recipe, evaluate_bpd, train

__all__ = ["SearchSettings", "run_searches"]


@dataclass(frozen=True)
class SearchSettings:
    """What the evaluation of trials needs besides the optimizers themselves."""

    spec: ModelSpec
    batch_size: int
    train: DictConfig
    progress: bool = True


def _score(flow: CouplingFlows, curve: torch.Tensor, diverged: torch.Tensor, value: str,
           validation: torch.Tensor, log_det: float) -> list[float]:
    scores = curve[-1].double() if value == "last_batch" else evaluate_bpd(flow, validation, log_det)
    scores = torch.where(diverged | ~torch.isfinite(scores), torch.full_like(scores, float("inf")), scores)
    return scores.tolist()


def run_searches(optimizers: Sequence[StructureOptimizer], data: Dataset, settings: SearchSettings) -> float:
    """Run every optimizer to the end; returns the wall time in seconds.

    All optimizers must share ``steps_per_trial``, ``warm_start``, ``value`` and
    ``validation_fraction`` (they come from one config). Trial ``j`` of instance ``i``
    trains with the generator seeded ``derive_seed(optimizers[i].seed, j)``.
    """
    start = time.perf_counter()
    lead = optimizers[0]
    recipe = Recipe.from_config(settings.train, steps=lead.steps_per_trial, patience=None)
    fit, validation = data.train, data.valid
    champions: list[CouplingFlows | None] = [None] * len(optimizers)
    bar = tqdm(total=max(o.last_iteration + 1 for o in optimizers), desc="structure search",
               unit="it", disable=None if settings.progress else True, leave=False)
    while True:
        asked = [(i, trial) for i, opt in enumerate(optimizers) for trial in opt.ask()]
        if not asked:
            break
        generators = [torch_generator(derive_seed(optimizers[i].seed, trial.number)) for i, trial in asked]
        flow = CouplingFlows(settings.spec, [trial.structure for _, trial in asked], generators)
        _warm_start(flow, asked, optimizers, champions)
        result = train(flow, fit, settings.batch_size, recipe, generators, data.log_det)
        values = _score(flow, result.curve, result.diverged, lead.value, validation, data.log_det)
        for (i, trial), value in zip(asked, values):
            trial.value = value
            trial.state = TrialState.COMPLETE if np.isfinite(value) else TrialState.DIVERGED
        for i, opt in enumerate(optimizers):
            mine = [(j, t) for j, (owner, t) in enumerate(asked) if owner == i]
            if not mine:
                continue
            opt.tell([t for _, t in mine])
            for j, trial in mine:
                if trial.accepted and lead.warm_start != "fresh":
                    champions[i] = _extract(flow, j)
        bar.update(1)
        bests = [o.best.value for o in optimizers if o.best is not None]
        if bests:
            bar.set_postfix(best_bpd=f"{np.mean(bests):.4f}")
    bar.close()
    return time.perf_counter() - start


def _warm_start(flow: CouplingFlows, asked: list[tuple[int, Trial]], optimizers: Sequence[StructureOptimizer],
                champions: list[CouplingFlows | None]) -> None:
    """Copy the parent's parameters into offspring: all layers, or the unchanged ones."""
    for j, (i, trial) in enumerate(asked):
        champion = champions[i]
        if trial.parent is None or champion is None or optimizers[i].warm_start == "fresh":
            continue
        parent = optimizers[i].best.structure
        if optimizers[i].warm_start == "parent":
            layers = list(range(flow.depth))
        else:
            changed = set(trial.structure.changed_layers(parent))
            layers = [l for l in range(flow.depth) if l not in changed]
        flow.copy_model(j, champion, 0, layers)


def _extract(flow: CouplingFlows, j: int) -> CouplingFlows:
    """A one-model flow holding a copy of model ``j``'s structure and parameters."""
    single = CouplingFlows(flow.spec, [flow.structures[j]], [torch.Generator()])
    single.copy_model(0, flow, j)
    return single
