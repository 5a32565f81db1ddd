"""Does a trial's value predict the final model? The evaluations of a search, held to the end.

``python -m flowsweep.bench evaluation`` draws random structures of each synthetic
benchmark (seeded), trains every one to the end with the default recipe (``train.*``,
early stopping on the validation split) and scores its test bpd. Then each evaluation a
search can use trains the same structures the way it trains a trial, twice, with two
independent random streams, and scores them by its value. A value that can select
structures ranks them as their final test bpd does (Spearman correlation with it) and
ranks them the same way under another seed (Spearman correlation with itself): a value
whose two seeds disagree is noise, whatever its correlation with the final model.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import torch

from flowsweep.config.compose import compose_config
from flowsweep.data import Dataset, load_dataset, preprocessed
from flowsweep.model import CouplingFlows, ModelSpec
from flowsweep.search.evaluation import Evaluation
from flowsweep.search.runner import trial_scores
from flowsweep.seeding import derive_seed, torch_generator
from flowsweep.structure import Structure, random_structure
from flowsweep.training import Recipe, evaluate_bpd, train

__all__ = ["PROBES", "DATASETS", "Probe", "evaluation_table"]

#: Benchmarks with a planted graph of each kind: smooth pairs, scale-setting pairs, a tree.
DATASETS = ("synthetic_pairs", "synthetic_hetero", "synthetic_tree")


@dataclass(frozen=True)
class Probe:
    """One evaluation as a search configures it: a label, the overrides that select it, and
    the steps of its trials (``None``: the evaluation's own ``steps``)."""

    label: str
    overrides: tuple[str, ...]
    steps: Optional[int] = None


PROBES = (
    Probe("Algorithm 1, the paper's reading: last minibatch after 50 SGD steps (cyclic 1e-7 to 1e-4)",
          ("+experiment=paper", "search=evolutionary")),
    Probe("Algorithm 1 at the defaults: last minibatch after 50 Adam steps", ("search=evolutionary",)),
    Probe("predictive: validation after 100 Adam steps, 2 replicas",
          ("search=evolutionary", "search/evaluation=predictive")),
    Probe("halving, first rung: validation after 100 steps", ("search=halving",), 100),
    Probe("halving, last rung: validation after 1200 steps", ("search=halving",), 1200),
)


def _data(dataset: str, depth: int) -> tuple[Dataset, object]:
    cfg = compose_config([f"dataset={dataset}", f"depth.layers={depth}"])
    return preprocessed(load_dataset(cfg.dataset, cfg.data_dir), cfg.model.preprocess), cfg


def _flow(cfg, data: Dataset, structures: Sequence[Structure], seeds: Sequence[int]) -> tuple[CouplingFlows, list]:
    generators = [torch_generator(seed) for seed in seeds]
    spec = ModelSpec.from_config(cfg.model, data.d, structures[0].m, structures[0].depth)
    return CouplingFlows(spec, list(structures), generators), generators


def final_test_bpd(cfg, data: Dataset, structures: Sequence[Structure], seed: int = 0) -> np.ndarray:
    """Each structure trained to the end with the job's recipe: test bpd ``[K]``."""
    flow, generators = _flow(cfg, data, structures, [derive_seed(seed, i) for i in range(len(structures))])
    train(flow, data.train, int(cfg.dataset.batch_size), Recipe.from_config(cfg.train), generators, data.log_det,
          valid=data.valid)
    return evaluate_bpd(flow, data.test, data.log_det).numpy()


def trial_values(cfg, data: Dataset, structures: Sequence[Structure], probe: Probe, stream: int) -> np.ndarray:
    """Each structure's value ``[K]`` as ``probe``'s evaluation scores a trial (mean over its
    replicas that did not diverge; ``inf`` where all did), from random stream ``stream``."""
    evaluation = Evaluation.from_config(cfg.search.evaluation)
    steps = probe.steps or evaluation.steps
    replicas = evaluation.replicas
    models = [s for s in structures for _ in range(replicas)]
    seeds = [derive_seed(stream, i, r) for i in range(len(structures)) for r in range(replicas)]
    flow, generators = _flow(cfg, data, models, seeds)
    recipe = evaluation.trial_recipe(cfg.train, steps)
    result = train(flow, data.train, int(cfg.dataset.batch_size), recipe, generators, data.log_det)
    scores, _ = trial_scores(flow, result.curve, result.diverged, evaluation.value, data, recipe)  # as a search scores them
    scores = scores.view(len(structures), replicas)
    mean = torch.where(torch.isfinite(scores), scores, torch.nan).nanmean(1).numpy()
    return np.where(np.isnan(mean), np.inf, mean)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(pd.Series(a).corr(pd.Series(b), method="spearman"))


def evaluation_table(datasets: Sequence[str] = DATASETS, structures: int = 60, depth: int = 4,
                     probes: Sequence[Probe] = PROBES, seed: int = 0) -> pd.DataFrame:
    """One row per dataset and evaluation: its model-steps per trial, the Spearman correlation
    of its value with the final test bpd and with its own value under another stream."""
    rows = []
    for dataset in datasets:
        data, cfg = _data(dataset, depth)
        rng = np.random.default_rng([seed, depth, zlib.crc32(dataset.encode())])
        drawn = [random_structure(data.d, cfg.model.m or data.d // 2, depth, rng) for _ in range(structures)]
        final = final_test_bpd(cfg, data, drawn, seed)
        for probe in probes:
            probe_cfg = compose_config([f"dataset={dataset}", f"depth.layers={depth}", *probe.overrides])
            first, second = (trial_values(probe_cfg, data, drawn, probe, stream) for stream in (seed + 1, seed + 2))
            evaluation = Evaluation.from_config(probe_cfg.search.evaluation)
            rows.append({"dataset": dataset, "evaluation": probe.label,
                         "model-steps per trial": (probe.steps or evaluation.steps) * evaluation.replicas,
                         "rho with final test bpd": _spearman(first, final),
                         "rho with itself, other seed": _spearman(first, second),
                         "final test bpd, min - max": f"{final.min():.3f} - {final.max():.3f}"})
    return pd.DataFrame(rows)
