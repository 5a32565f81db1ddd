"""The job config ``main.py`` composes, built from Python (benchmarks, the synthetic data tool, tests)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig

__all__ = ["CONF_DIR", "compose_config"]

#: The project's config folder (the repository's ``conf/``).
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def compose_config(overrides: Sequence[str]) -> DictConfig:
    """The job config ``main.py`` would compose from ``overrides``."""
    from hydra import compose, initialize_config_dir

    from flowsweep.config import register_schema

    register_schema()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))
