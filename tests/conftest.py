"""Shared pytest fixtures."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from omegaconf import DictConfig, OmegaConf

REPO = Path(__file__).resolve().parents[1]


@functools.lru_cache(maxsize=1)
def _default_train() -> dict:
    from flowsweep.config.compose import compose_config

    return OmegaConf.to_container(compose_config([]).train)


def train_recipe(**changes: Any):
    """A training recipe: the defaults' ``train.*`` (conf/config.yaml, composed), ``changes`` changed."""
    from flowsweep.training import Recipe

    return Recipe.from_config(_default_train(), **changes)


@pytest.fixture(autouse=True)
def seeded_torch() -> None:
    """Every test draws the same ``torch.randn`` numbers on every run, so a pass or a failure is reproducible."""
    import torch

    torch.manual_seed(0)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The raw UCI folder (``<dataset>/<file>``): ``FLOWSWEEP_DATA_DIR``, else ``<repo>/../shared/datasets``."""
    env = os.environ.get("FLOWSWEEP_DATA_DIR")
    path = Path(env).expanduser() if env else REPO.parent / "shared" / "datasets"
    if not path.is_dir():
        pytest.skip(
            f"raw UCI data folder {path} not found: set FLOWSWEEP_DATA_DIR to a folder laid out "
            f"as <dataset>/<file> (magic/magic04.data, turbine/gt_2011.csv, ...)"
        )
    return path


@pytest.fixture(scope="session")
def dataset_cfg() -> Callable[..., DictConfig]:
    """Factory: ``dataset_cfg("magic", validation_fraction=0)`` composes ``conf/dataset/magic.yaml``
    over ``conf/dataset_defaults.yaml`` and the ``DatasetConfig`` schema with plain OmegaConf, then applies the overrides. The
    rows are the files' own (``dequantize=False``) unless an override says otherwise."""
    from flowsweep.config import DatasetConfig

    def make(name: str, **overrides: Any) -> DictConfig:
        cfg = OmegaConf.merge(OmegaConf.structured(DatasetConfig), OmegaConf.load(REPO / "conf" / "dataset_defaults.yaml"),
                              OmegaConf.load(REPO / "conf" / "dataset" / f"{name}.yaml"))
        cfg.dequantize = False
        for key, value in overrides.items():
            cfg[key] = value
        return cfg

    return make


def _search_runs(uri: str, **kwargs: Any):
    """``mlflow.search_runs`` against ``uri``, leaving the global tracking URI (and its env var) as it was."""
    import mlflow

    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        return mlflow.search_runs(**kwargs)
    finally:
        mlflow.set_tracking_uri(previous)
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture(scope="session")
def search_runs() -> Callable[..., Any]:
    """``search_runs(uri, experiment_names=[...])``: a DataFrame of runs, as ``mlflow.search_runs`` gives."""
    return _search_runs
