"""What the benchmarks train: a composed flowsweep config, its dataset and K structures.

Settings come from ``conf/`` exactly as a job composes them (batch size, learning-rate
schedule, ``m``), so the benchmark measures the configuration the experiments run.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
from omegaconf import DictConfig

from flowsweep.config.compose import compose_config
from flowsweep.data import Dataset, load_dataset, preprocessed
from flowsweep.model import CouplingFlows, ModelSpec
from flowsweep.seeding import derive_seed, torch_generator
from flowsweep.structure import Structure, random_structure
from flowsweep.training import Recipe

__all__ = ["Workload", "make_workload", "best_of", "load_note"]

#: Stream key of the benchmark's random structures under each model's seed.
_STRUCTURE_KEY = 1


@dataclass
class Workload:
    """K models of one dataset and depth, each with a random structure and its own seed."""

    cfg: DictConfig
    spec: ModelSpec
    data: Dataset
    structures: list[Structure]
    seeds: list[int]

    @property
    def k(self) -> int:
        return len(self.structures)

    @property
    def batch_size(self) -> int:
        return int(self.cfg.dataset.batch_size)

    @property
    def threads(self) -> int:
        """torch threads of the batched engine (``train.threads``)."""
        return int(self.cfg.train.threads)

    def recipe(self, steps: int) -> Recipe:
        """The job's training recipe for ``steps`` steps (no early stopping: every step is timed)."""
        return Recipe.from_config(self.cfg.train, steps=steps, patience=None)

    def generators(self) -> list[torch.Generator]:
        """Fresh generators: model ``k``'s draws are the same for every engine that uses them."""
        return [torch_generator(s) for s in self.seeds]

    def initial_flow(self) -> CouplingFlows:
        """The K models' initial parameters, as a job starts them."""
        return CouplingFlows(self.spec, self.structures, self.generators())

    def fresh(self, flow: CouplingFlows) -> CouplingFlows:
        return copy.deepcopy(flow)

    def in_dtype(self, dtype: torch.dtype) -> Workload:
        """The same workload with its data in ``dtype``."""
        data = dataclasses.replace(self.data, train=self.data.train.to(dtype), valid=self.data.valid.to(dtype),
                                   test=self.data.test.to(dtype))
        return dataclasses.replace(self, data=data)


def make_workload(dataset: str = "magic", depth: int = 8, models: int = 20, seed: int = 0,
                  data_dir: Optional[str] = None, threads: Optional[int] = None,
                  kernel: Optional[str] = None) -> Workload:
    """Compose ``dataset=<dataset> depth=<depth>`` (and ``train.threads``, ``train.kernel``, if
    given), load the data, draw ``models`` random structures."""
    overrides = [f"dataset={dataset}", f"depth.layers={depth}", f"seed={seed}"]
    if threads is not None:
        overrides.append(f"train.threads={threads}")
    if kernel is not None:
        overrides.append(f"train.kernel={kernel}")
    cfg = compose_config(overrides)
    data = load_dataset(cfg.dataset, data_dir or cfg.data_dir)
    data = preprocessed(data, cfg.model.preprocess)  # as run_job
    m = cfg.model.m if cfg.model.m is not None else data.d // 2
    seeds = [derive_seed(seed, i) for i in range(models)]
    structures = [random_structure(data.d, m, depth, np.random.default_rng(derive_seed(s, _STRUCTURE_KEY)))
                  for s in seeds]
    return Workload(cfg, ModelSpec.from_config(cfg.model, data.d, m, depth), data, structures, seeds)


def best_of(repeats: int, run: Callable[[], object]) -> tuple[float, object]:
    """Wall seconds of the fastest of ``repeats`` calls (the least disturbed by other load), and its result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = run()
        elapsed = time.perf_counter() - start
        if elapsed < best:
            best, result = elapsed, out
    return best, result


def load_note() -> str:
    """The machine's 1-minute load average and core count, to print next to every timing."""
    load = os.getloadavg()[0]
    return f"load average {load:.2f} on {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} thread(s)"
