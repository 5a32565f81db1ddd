"""``layout=opt``: the structures are searched for, by the optimizer the ``search`` group chooses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from omegaconf import DictConfig, OmegaConf

from flowsweep.config import ConfigError
from flowsweep.layouts.base import Layout, LayoutJob
from flowsweep.search.job import check_search
from flowsweep.structure import Structure

__all__ = ["Searched"]


@dataclass
class Searched(Layout):
    """A structure search per instance (flowsweep.search.job), run once the job's runs exist."""

    searches = True

    def check(self, cfg: DictConfig) -> None:
        value = OmegaConf.select(cfg, "search.evaluation.value")
        if value == "validation" and cfg.dataset.validation_fraction == 0:
            raise ConfigError("search.evaluation.value",
                              "validation needs a validation split: dataset.validation_fraction > 0")

    def uses_dependence(self, cfg: DictConfig, d: int, m: int) -> bool:
        return check_search(cfg, d, m)  # builds one optimizer and the evaluation: checks the search node

    def structures(self, job: LayoutJob) -> Optional[list[Structure]]:
        return None
