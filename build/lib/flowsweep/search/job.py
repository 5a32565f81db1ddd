"""A job's structure searches: optimizers built from the ``search`` group, run as one batch.

The ``search`` node minus its ``evaluation`` builds one optimizer per model instance
(Hydra's ``instantiate``); ``search.evaluation`` says how every trial is evaluated. The
optimizers that read the features' dependence (``uses_dependence``) get one matrix,
estimated once per job from the training rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from omegaconf import DictConfig, OmegaConf

from flowsweep.config.compose import build
from flowsweep.data import Dataset
from flowsweep.structure.dependence import Dependence
from flowsweep.model import ModelSpec
from flowsweep.search.base import StructureOptimizer
from flowsweep.search.evaluation import Evaluation
from flowsweep.search.runner import SearchOutcome, SearchSettings, run_searches
from flowsweep.seeding import InstanceStream, JobStream, derive_seed
from flowsweep.structure import Structure

__all__ = ["build_optimizers", "check_search", "job_dependence", "JobSearch",
           "search_job"]



def job_dependence(cfg: DictConfig, data: Dataset) -> Dependence:
    """The features' estimated dependence of a job, as the ``dependence`` node says."""
    return Dependence.estimate(data.train.double().numpy(), cfg.dependence, derive_seed(cfg.seed, JobStream.DEPENDENCE) % 2**32)


def _optimizer_node(cfg: DictConfig) -> dict:
    node = OmegaConf.to_container(cfg.search, resolve=True)
    node.pop("evaluation", None)
    return node


def build_optimizers(cfg: DictConfig, d: int, m: int, seeds: list[int],
                     dependence: Optional[Dependence] = None) -> list[StructureOptimizer]:
    """One optimizer per instance from the ``search`` group (``_target_`` + its keys)."""
    node = _optimizer_node(cfg)
    optimizers = [build(node, "search", "optimizer", d=d, m=m, depth=cfg.depth.layers,
                        seed=derive_seed(s, InstanceStream.SEARCH)) for s in seeds]
    for optimizer in optimizers:  # after instantiate, which would turn it into a dict
        optimizer.dependence = dependence
    return optimizers


def check_search(cfg: DictConfig, d: int, m: int) -> bool:
    """Build one optimizer and the evaluation to check the ``search`` node (raises
    :class:`ConfigError`); returns whether the optimizer reads the dependence matrix."""
    Evaluation.from_config(cfg.search.get("evaluation"))
    return type(build_optimizers(cfg, d, m, [0])[0]).uses_dependence


@dataclass
class JobSearch:
    """What a job's searches produced: the optimizers (history and best) and the outcome."""

    optimizers: list[StructureOptimizer]
    outcome: SearchOutcome
    evaluation: Evaluation

    @property
    def structures(self) -> list[Structure]:
        """Each instance's structure: its final model's where its search trained one, else its best
        trial's (its first trial's if every trial diverged)."""
        return [final.structure if final is not None else (o.best or o.history[0]).structure
                for o, final in zip(self.optimizers, self.outcome.finals)]

    @property
    def trained_final(self) -> bool:
        """Whether the searches trained every instance's final model (halving's final rung)."""
        return all(final is not None for final in self.outcome.finals)


def search_job(cfg: DictConfig, spec: ModelSpec, data: Dataset, seeds: list[int],
               dependence: Optional[Dependence]) -> JobSearch:
    """Run the job's searches, one per instance seed, as one batch of models."""
    evaluation = Evaluation.from_config(cfg.search.get("evaluation"))
    optimizers = build_optimizers(cfg, spec.d, spec.m, seeds, dependence)
    settings = SearchSettings(spec, int(cfg.dataset.batch_size), cfg.train, evaluation, bool(cfg.progress), seeds)
    return JobSearch(optimizers, run_searches(optimizers, data, settings), evaluation)
