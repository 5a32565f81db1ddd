"""The job config ``main.py`` composes, built from Python (benchmarks, the synthetic data tool, tests)."""

from __future__ import annotations

from typing import Any, Sequence

from omegaconf import DictConfig

from flowsweep.config.overrides import unknown_option
from flowsweep.config.paths import CONF_DIR

__all__ = ["CONF_DIR", "compose_config", "build"]


def compose_config(overrides: Sequence[str]) -> DictConfig:
    """The job config ``main.py`` would compose from ``overrides``; an option ``conf/`` does not
    hold (``dataset=nope``) is the :class:`~flowsweep.config.schema.ConfigError` main.py's line
    says, before Hydra's page of every option."""
    from hydra import compose, initialize_config_dir

    from flowsweep.config import register_schema
    from flowsweep.config.schema import ConfigError

    unknown = unknown_option(overrides)
    if unknown:
        key, message = unknown.split(": ", 1)
        raise ConfigError(key, message)
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
