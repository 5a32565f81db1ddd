"""Layouts whose structures the job's config and data decide: parity, random, dependence, the oracle."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from omegaconf import DictConfig

from flowsweep.config import ConfigError
from flowsweep.layouts.base import Layout, LayoutJob
from flowsweep.seeding import InstanceStream, derive_seed
from flowsweep.structure import Structure, parity_structure, random_structure
from flowsweep.structure.graph import oracle_structure

__all__ = ["Parity", "Random", "FromDependence", "Oracle"]



@dataclass
class Parity(Layout):
    """Alternating index parity: even features condition layer 1, odd ones layer 2, and so on."""

    def structures(self, job: LayoutJob) -> list[Structure]:
        return [parity_structure(job.data.d, job.m, job.depth)] * len(job.seeds)


@dataclass
class Random(Layout):
    """A random ``m``-subset per layer, drawn from each instance's own stream."""

    def structures(self, job: LayoutJob) -> list[Structure]:
        return [random_structure(job.data.d, job.m, job.depth, np.random.default_rng(derive_seed(s, InstanceStream.LAYOUT)))
                for s in job.seeds]


@dataclass
class FromDependence(Layout):
    """Masks built from the features' estimated dependence, no search (flowsweep.structure.dependence)."""

    def uses_dependence(self, cfg: DictConfig, d: int, m: int) -> bool:
        return True

    def structures(self, job: LayoutJob) -> list[Structure]:
        assert job.dependence is not None  # uses_dependence asked for it
        return [job.dependence.structure(job.m, job.depth, seed=derive_seed(s, InstanceStream.LAYOUT) % 2**32)
                for s in job.seeds]


@dataclass
class Oracle(Layout):
    """The planted oracle of a synthetic dataset (flowsweep.structure.graph.oracle_structure)."""

    def structures(self, job: LayoutJob) -> list[Structure]:
        if not job.data.graph:
            raise ConfigError("layout", f"layout={self.name} needs a dataset with planted dependencies "
                                        f"(dataset=synthetic_*); {job.data.name} has none")
        return [oracle_structure(job.data.graph, job.data.d, job.m, job.depth)] * len(job.seeds)
