"""How a search evaluates a trial: the ``search.evaluation`` config node.

The same for every optimizer of a job, so optimizers only propose and are told. A
trial's structure is trained ``replicas`` times (independent initial parameters and
minibatches, one batch of models) for ``steps`` steps with the trial recipe — the
final training's ``train.*`` with ``recipe``'s keys changed and never early stopping —
and scored by ``value``: the bpd of the last training minibatch (the paper) or the bpd
of the validation split; the trial's value is the mean over the replicas that did not
diverge. With ``paired`` seeds, every trial of one iteration of a search starts its
replica ``r`` from the same random stream (the same initial parameters and minibatches),
so trials of one iteration differ by their structure alone — common random numbers,
which make the comparison of an offspring with its re-evaluated parent far less noisy;
otherwise every trial has streams of its own. ``warm_start`` says where an offspring's parameters start (fresh, or from its
parent's), ``final_start`` where the final training of the best structure starts
(fresh, or from the parameters its accepted trial reached). One trial costs
``steps * replicas`` model-steps of the search budget.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Optional

from flowsweep.config import ConfigError

__all__ = ["VALUES", "WARM_STARTS", "FINAL_STARTS", "SEEDS", "Evaluation"]

#: What a trial is scored by: bpd of the last training minibatch (the paper) or of the
#: dataset's validation split (``dataset.validation_fraction`` of the training rows).
VALUES = ("last_batch", "validation")
#: How an offspring's parameters start: new ones, all of its parent's, or the parent's
#: for the layers whose mask did not change.
WARM_STARTS = ("fresh", "parent", "inherit")
#: How the final training of the best structure starts: new parameters, or those its
#: accepted trial reached ("optimizes ξ and θ in an alternating fashion").
FINAL_STARTS = ("fresh", "best")
SEEDS = ("independent", "paired")


@dataclass(frozen=True)
class Evaluation:
    """The ``search.evaluation`` node (see the module docstring)."""

    steps: int = 50
    value: str = "last_batch"
    replicas: int = 1
    warm_start: str = "fresh"
    final_start: str = "fresh"
    #: ``independent``: each trial's replicas have streams of their own; ``paired``: the trials of
    #: one iteration share them (common random numbers).
    seeds: str = "independent"
    #: Trials stop early on the validation split and are scored at their best evaluation.
    early_stopping: bool = False
    #: Keys of ``train.*`` that the trials change (empty: the final training's recipe).
    recipe: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        key = "search.evaluation."
        if self.steps < 1:
            raise ConfigError(key + "steps", f"must be >= 1, got {self.steps}")
        if self.replicas < 1:
            raise ConfigError(key + "replicas", f"must be >= 1, got {self.replicas}")
        for name, allowed in (("value", VALUES), ("warm_start", WARM_STARTS), ("final_start", FINAL_STARTS),
                              ("seeds", SEEDS)):
            if getattr(self, name) not in allowed:
                raise ConfigError(key + name, f"must be one of {allowed}, got {getattr(self, name)!r}")
        if self.early_stopping and self.value != "validation":
            raise ConfigError(key + "early_stopping", "needs value=validation (it stops on the validation split)")
        from flowsweep.training import Recipe

        known = {f.name for f in fields(Recipe)} - {"steps", "patience", "threads", "kernel"}
        unknown = sorted(set(self.recipe) - known)
        if unknown:
            raise ConfigError(key + "recipe", f"unknown key(s) {unknown}; a trial recipe may change {sorted(known)}")

    @classmethod
    def from_config(cls, node: Any) -> Evaluation:
        """The evaluation of a ``search.evaluation`` node (a DictConfig or a mapping)."""
        from omegaconf import DictConfig, OmegaConf

        values = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node or {})
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError("search.evaluation", f"unknown key(s) {unknown}; known: {sorted(names)}")
        return cls(**{k: v for k, v in values.items() if v is not None or k != "recipe"})

    def trial_recipe(self, train: Any, steps: Optional[int] = None) -> Any:
        """The trials' :class:`~flowsweep.training.Recipe`: ``train`` (the ``train`` node) changed by
        :attr:`recipe`, ``steps`` (default :attr:`steps`) long; with :attr:`early_stopping`, the final
        training's patience (none there: a patience longer than the trial, which never stops it but
        still keeps its best evaluation), else none."""
        from flowsweep.training import Recipe

        steps = steps or self.steps
        patience = (train.get("patience") or steps + 1) if self.early_stopping else None
        return Recipe.from_config(train, **{**self.recipe, "steps": steps, "patience": patience})

    def stream(self, seed: int, trial: Any, replica: int) -> tuple[int, ...]:
        """The keys of the random stream of ``replica`` of ``trial`` in the search seeded ``seed``."""
        return (seed, trial.iteration, replica, 1) if self.seeds == "paired" else (seed, trial.number, replica)

