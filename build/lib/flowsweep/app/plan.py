"""A job's plan: what is decided about a job before any of its runs exists, checked once.

:func:`plan_job` checks the config's values, builds the layout and lets it check its keys,
resolves the tracking store and checks that it answers, loads and preprocesses the data
and checks what the data decides (``m``, a batch that fits). Every later step of the job
reads the :class:`JobPlan` instead of checking again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from flowsweep.config.checks import validate, validate_against_data, validate_overrides
from flowsweep.data import Dataset, load_dataset, preprocessed
from flowsweep.layouts import Layout, build_layout
from flowsweep.model import ModelSpec
from flowsweep.record.tracking import check_reachable, resolve_tracking_uri
from flowsweep.seeding import derive_seed

__all__ = ["JobPlan", "plan_job"]


@dataclass(frozen=True)
class JobPlan:
    """A checked job: its config, layout, store, data, model family member and instance seeds."""

    cfg: DictConfig
    layout: Layout
    #: The resolved tracking URI; the store answered when the plan was made.
    tracking_uri: str
    #: The job's data, through ``model.preprocess`` (its ``log_det`` keeps bpd in raw units).
    data: Dataset
    #: The model every instance trains (``m`` resolved against the data).
    spec: ModelSpec
    #: One seed per model instance.
    seeds: list[int]

    @property
    def m(self) -> int:
        return self.spec.m


def _launch_dir() -> str:
    return HydraConfig.get().runtime.cwd if HydraConfig.initialized() else os.getcwd()


def plan_job(cfg: DictConfig, data: Optional[Dataset] = None, validated: bool = False) -> JobPlan:
    """The plan of ``cfg``: every check that can reject the input, once (:class:`ConfigError`,
    :class:`~flowsweep.data.DataError`). ``data`` is the raw dataset where the caller loaded
    it; ``validated``: the caller ran :func:`~flowsweep.config.checks.validate` already."""
    if not validated:
        validate(cfg)
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    validate_overrides(overrides, cfg, searches=True)  # keys added with +, before a layout takes them
    layout = build_layout(cfg.layout)
    layout.check(cfg)
    multirun = HydraConfig.initialized() and str(HydraConfig.get().mode) == "RunMode.MULTIRUN"
    validate_overrides(overrides, cfg, layout.searches, multirun)  # and search.* keys where no search runs
    uri = resolve_tracking_uri(cfg.tracking.uri, _launch_dir())
    check_reachable(uri)  # within seconds, before the data and the training code
    if data is None:
        data = load_dataset(cfg.dataset, cfg.data_dir)
    # A fixed map ahead of the first layer: standardizing is the same model family (its
    # constant transform absorbs it), but SGD no longer fights raw scales such as turbine's
    # ~1000 hPa; whitening starts the flow from a full-covariance Gaussian. The map's
    # log-determinant keeps every bpd in raw units.
    data = preprocessed(data, cfg.model.preprocess)
    m = validate_against_data(cfg, data.d, data.train.shape[0], 0 if data.valid is None else data.valid.shape[0])
    spec = ModelSpec.from_config(cfg.model, data.d, m, cfg.depth.layers)
    seeds = [derive_seed(cfg.seed, i) for i in range(cfg.instances)]
    return JobPlan(cfg, layout, uri, data, spec, seeds)
