"""The configuration: the typed schema Hydra composes against (:mod:`.schema`), the value
checks that need more than a type (:mod:`.checks`), composing a job's config from ``conf/``
(:mod:`.compose`) and the command line's depth quoting (:mod:`.overrides`).

The lowest layer of the package: it imports nothing else of flowsweep at import time.
"""

from flowsweep.config.schema import (
    ConfigError,
    DivergedError,
    DatasetConfig,
    SyntheticConfig,
    DepthConfig,
    ModelConfig,
    DependenceConfig,
    TrainConfig,
    TrackingConfig,
    Config,
    register_schema,
    CHOICES,
)

__all__ = [
    "ConfigError",
    "DivergedError",
    "DatasetConfig",
    "SyntheticConfig",
    "DepthConfig",
    "ModelConfig",
    "DependenceConfig",
    "TrainConfig",
    "TrackingConfig",
    "Config",
    "register_schema",
    "CHOICES",
]
