"""The job config ``main.py`` composes, built from Python (benchmarks, the synthetic data tool, tests)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig

__all__ = ["CONF_DIR", "compose_config", "build"]

#: The project's config folder (the repository's ``conf/``).
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def compose_config(overrides: Sequence[str]) -> DictConfig:
    """The job config ``main.py`` would compose from ``overrides``."""
    from hydra import compose, initialize_config_dir

    from flowsweep.config import register_schema

    register_schema()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def build(node: Any, key: str, what: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate(node, **kwargs)`` with its failures as one :class:`ConfigError`
    naming ``key``: a ConfigError raised by the built class's own checks comes out unwrapped
    (instantiate wraps it), anything else (unknown keys, a bad ``_target_``) as
    ``cannot build the <what>: <cause>``."""
    from hydra.utils import instantiate

    from flowsweep.config.schema import ConfigError

    try:
        return instantiate(node, _convert_="all", **kwargs)
    except ConfigError:
        raise
    except Exception as error:  # instantiate wraps unknown keys and bad targets
        cause = error.__cause__ or error
        if isinstance(cause, ConfigError):
            raise cause from None
        raise ConfigError(key, f"cannot build the {what}: {cause}") from None
