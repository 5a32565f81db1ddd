"""Runs many structure searches side by side, their trials trained as one batch.

Each iteration asks every optimizer for its trials, builds one
:class:`~flowsweep.model.CouplingFlows` holding every replica of all of them, trains it
with the shared training loop as the :class:`~flowsweep.search.evaluation.Evaluation`
says, and tells every optimizer its values. Every replica of every trial has its own
random stream (derived from its instance's seed, its trial number and its replica), so
a search gives the same result alone or among many.

A *final* trial (:attr:`Trial.final <flowsweep.search.base.Trial>`) is trained as a fixed
layout's model is — ``train.*`` with early stopping on the validation split, one model
seeded by its instance's seed (so a finalist of the dependence structure is exactly
``layout=dependence``'s model) — and scored by its validation bpd at its best step; the
accepted one of each instance comes back as that instance's :class:`FinalModel`, which the
job reports instead of training its structure again. Every model-step spent is counted.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

from flowsweep.data import Dataset
from flowsweep.model import CouplingFlows, ModelSpec
from flowsweep.search.base import StructureOptimizer, Trial, TrialState
from flowsweep.search.evaluation import Evaluation
from flowsweep.seeding import derive_seed, torch_generator
from flowsweep.structure import Structure
from flowsweep.training import Recipe, TrainResult, row_bpd, train

__all__ = ["SearchSettings", "FinalModel", "SearchOutcome", "run_searches", "trial_scores", "train_finals",
           "tell_scores"]


@dataclass(frozen=True)
class SearchSettings:
    """What the searches of a job share besides their optimizers."""

    spec: ModelSpec
    batch_size: int
    train: DictConfig
    evaluation: Evaluation
    progress: bool = True
    #: The instances' seeds, which seed the final trials as the final training is seeded.
    seeds: Sequence[int] = ()


@dataclass
class FinalModel:
    """The final model an instance's search trained (its accepted final trial): its
    ``structure`` and parameters ``theta`` ``[P]``, its minibatch bpd ``curve`` ``[steps]``,
    validation bpd ``val_curve`` ``[evaluations]`` at ``val_steps``, whether it ``diverged``,
    the ``steps`` it trained and the wall ``seconds`` of the training that trained it."""

    structure: Structure
    theta: torch.Tensor
    curve: torch.Tensor
    val_curve: torch.Tensor
    val_steps: list[int]
    diverged: bool
    steps: int
    seconds: float


@dataclass
class SearchOutcome:
    """Wall ``seconds`` of all searches; per instance, the ``model_steps`` spent (every trial, final
    ones included), where the evaluation keeps them the parameters its best trial reached
    (``champions``, one-model flows), and the final model its search trained (``finals``; None
    where it trained none)."""

    seconds: float
    model_steps: list[int]
    champions: list[Optional[CouplingFlows]]
    finals: list[Optional[FinalModel]]


def trial_scores(flow: CouplingFlows, curve: torch.Tensor, diverged: torch.Tensor, value: str,
                 data: Dataset, recipe: Recipe) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Each model's value ``[K]`` (``inf`` where it diverged) and, scored on the validation split
    with ``recipe``'s kernel and threads, the bpd of every validation row ``[K, v]``."""
    rows = None if value == "last_batch" else row_bpd(flow, data.valid, data.log_det, threads=recipe.threads,
                                                      kernel=recipe.kernel)
    scores = curve[-1].double() if rows is None else rows.mean(1)
    return torch.where(diverged | ~torch.isfinite(scores), torch.full_like(scores, math.inf), scores), rows


def tell_scores(trial: Trial, scores: torch.Tensor, rows: Optional[torch.Tensor], pruned: bool) -> torch.Tensor:
    """Set ``trial``'s value, state and validation rows from its replicas' ``scores`` ``[replicas]``
    (``inf`` where one diverged) and rows ``[replicas, v]``: the mean over the finite replicas,
    diverged where none is, pruned where its optimizer stopped it. Returns which replicas are finite."""
    finite = torch.isfinite(scores)
    trial.value = float(scores[finite].mean()) if finite.any() else math.inf
    trial.state = (TrialState.DIVERGED if not finite.any() else TrialState.PRUNED if pruned else TrialState.COMPLETE)
    if rows is not None and finite.any():
        trial.rows = rows[finite].mean(0).float().numpy()
    return finite


def run_searches(optimizers: Sequence[StructureOptimizer], data: Dataset, settings: SearchSettings) -> SearchOutcome:
    """Run every optimizer to the end. Each replica trains with the generator seeded by its
    :meth:`Evaluation.stream <flowsweep.search.evaluation.Evaluation.stream>`."""
    start = time.perf_counter()
    evaluation, replicas = settings.evaluation, settings.evaluation.replicas
    keep = evaluation.warm_start != "fresh" or evaluation.final_start == "best"
    champions: list[Optional[CouplingFlows]] = [None] * len(optimizers)
    #: Per instance, the parameters ``[replicas, P]`` each trial reached (for trials that resume it).
    reached: list[dict[int, torch.Tensor]] = [{} for _ in optimizers]
    spent = [0] * len(optimizers)
    finals: list[Optional[FinalModel]] = [None] * len(optimizers)
    bar = tqdm(total=max(o.last_iteration + 1 for o in optimizers), desc="structure search",
               unit="it", disable=None if settings.progress else True, leave=False)
    while True:
        asked = [(i, trial) for i, opt in enumerate(optimizers) for trial in opt.ask()]
        if not asked:
            break
        trained: dict[tuple[int, int], FinalModel] = {}  # (instance, trial number): each final trial's model
        for final, steps in sorted({(trial.final, trial.steps or evaluation.steps) for _, trial in asked}):
            group = [(i, trial) for i, trial in asked if (trial.final, trial.steps or evaluation.steps) == (final, steps)]
            clock = time.perf_counter()
            flow, scores, rows, result, pruned = _evaluate(group, optimizers, data, settings, steps, champions, reached)
            width = 1 if final else replicas
            for j, ((i, trial), row) in enumerate(zip(group, scores)):
                finite = tell_scores(trial, row, None if rows is None else rows[j], (i, trial.number) in pruned)
                reached[i][trial.number] = flow.theta.detach()[j * width:(j + 1) * width].clone()
                trial.model_steps = int(result.steps[j * width:(j + 1) * width].sum())
                spent[i] += trial.model_steps
                if final:
                    trained[i, trial.number] = FinalModel(
                        trial.structure, flow.theta.detach()[j].clone(), result.curve[:, j].clone(),
                        result.val_curve[:, j].clone(), list(result.val_steps), not bool(finite.any()),
                        trial.model_steps, time.perf_counter() - clock)
        for i, opt in enumerate(optimizers):
            mine = [t for owner, t in asked if owner == i]
            if not mine:
                continue
            opt.tell(mine)
            for trial in mine:
                if trial.accepted and keep:
                    champions[i] = _champion(settings.spec, trial, reached[i][trial.number])
            mine_final = [t for t in mine if t.final]
            if mine_final:  # every finalist diverged: the first stands for the instance, diverged
                winner = next((t for t in mine_final if t.accepted), mine_final[0])
                finals[i] = trained[i, winner.number]
        bar.update(1)
        bests = [o.best_value for o in optimizers if o.best is not None]
        if bests:
            bar.set_postfix(best_bpd=f"{np.mean(bests):.4f}")
    bar.close()
    return SearchOutcome(time.perf_counter() - start, spent, champions, finals)


def _evaluate(group: list[tuple[int, Trial]], optimizers: Sequence[StructureOptimizer], data: Dataset,
              settings: SearchSettings, steps: int, champions: list[Optional[CouplingFlows]],
              reached: list[dict[int, torch.Tensor]]) -> tuple[CouplingFlows, torch.Tensor, Optional[torch.Tensor],
                                                               TrainResult, set[tuple[int, int]]]:
    """Train every replica of ``group``'s trials for ``steps`` steps as one batch (final trials: one
    model each, as the final training trains it); the flow, the scores ``[trials, replicas]``
    (``inf`` where a replica diverged), scored on the validation split the rows' bpd
    ``[trials, replicas, v]``, the training's result and the (instance, trial number) of the
    final trials their optimizers pruned."""
    if group[0][1].final:
        return train_finals(group, optimizers, data, settings)
    evaluation, replicas = settings.evaluation, settings.evaluation.replicas
    models = [(i, trial, r) for i, trial in group for r in range(replicas)]
    generators = [torch_generator(derive_seed(*evaluation.stream(optimizers[i].seed, trial, r)))
                  for i, trial, r in models]
    flow = CouplingFlows(settings.spec, [trial.structure for _, trial, _ in models], generators)
    with torch.no_grad():
        for j, (i, trial, r) in enumerate(models):
            if trial.resume is not None:
                flow.theta[j] = reached[i][trial.resume][r]
    _warm_start(flow, [m for m in models if m[1].resume is None], models, champions, evaluation.warm_start)
    recipe = evaluation.trial_recipe(settings.train, steps)
    valid = data.valid if evaluation.early_stopping else None
    result = train(flow, data.train, settings.batch_size, recipe, generators, data.log_det, valid=valid)
    scores, rows = trial_scores(flow, result.curve, result.diverged, evaluation.value, data, recipe)
    shape = (len(group), replicas)
    return flow, scores.view(shape), None if rows is None else rows.view(*shape, -1), result, set()


def train_finals(group: list[tuple[int, Trial]], optimizers: Sequence[StructureOptimizer], data: Dataset,
                  settings: SearchSettings
                  ) -> tuple[CouplingFlows, torch.Tensor, Optional[torch.Tensor], TrainResult, set[tuple[int, int]]]:
    """The final trials of ``group``, trained and scored as the final training trains a fixed
    layout's model: ``train.*``, early stopping on the validation split (the best step's
    parameters kept), each seeded by its instance's seed; at every validation evaluation each
    instance's optimizer may stop some (:meth:`StructureOptimizer.prune`)."""
    if not settings.seeds:
        raise ValueError("final trials need the instances' seeds (SearchSettings.seeds)")
    generators = [torch_generator(settings.seeds[i]) for i, _ in group]
    flow = CouplingFlows(settings.spec, [trial.structure for _, trial in group], generators)
    pruned: set[tuple[int, int]] = set()
    models = {i: [j for j, (owner, _) in enumerate(group) if owner == i] for i, _ in group}

    def prune(step: int, best: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        stop = torch.zeros_like(moving)
        for i, js in models.items():
            values = {group[j][1].number: float(best[j]) for j in js}
            training = {group[j][1].number for j in js if moving[j]}
            chosen = optimizers[i].prune(step, values, training) & training
            for j in js:
                if group[j][1].number in chosen:
                    stop[j] = True
                    pruned.add((i, group[j][1].number))
        return stop

    recipe = Recipe.from_config(settings.train)
    result = train(flow, data.train, settings.batch_size, recipe, generators, data.log_det, valid=data.valid,
                   prune=prune if len(data.valid) else None)
    value = "validation" if len(data.valid) else "last_batch"
    scores, rows = trial_scores(flow, result.curve, result.diverged, value, data, recipe)
    return (flow, scores.view(len(group), 1), None if rows is None else rows.view(len(group), 1, -1), result,
            pruned)


def _warm_start(flow: CouplingFlows, fresh: list[tuple[int, Trial, int]], models: list[tuple[int, Trial, int]],
                champions: list[Optional[CouplingFlows]], warm_start: str) -> None:
    """Copy the parent's parameters into the ``fresh`` offspring: all layers, or the unchanged ones."""
    if warm_start == "fresh":
        return
    for entry in fresh:
        j = models.index(entry)
        i, trial, _ = entry
        champion = champions[i]
        if trial.parent is None or champion is None:
            continue
        if warm_start == "parent":
            layers = list(range(flow.depth))
        else:
            changed = set(trial.structure.changed_layers(champion.structures[0]))
            layers = [l for l in range(flow.depth) if l not in changed]
        flow.copy_model(j, champion, 0, layers)


def _champion(spec: ModelSpec, trial: Trial, reached: torch.Tensor) -> CouplingFlows:
    """A one-model flow of ``trial``'s structure with the parameters its first replica reached."""
    single = CouplingFlows(spec, [trial.structure], [torch.Generator()])
    with torch.no_grad():
        single.theta[0] = reached[0]
    return single
