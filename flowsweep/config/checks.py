"""Checks of a composed config that its types cannot express: ranges, choices, and what the
data decides (``m``, a batch that fits); a layout checks its own keys (flowsweep.layouts). Each raises
:class:`~flowsweep.config.ConfigError` naming the offending key, before any run exists.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from flowsweep.config import CHOICES, ConfigError

__all__ = ["validate", "validate_against_data"]


def _at_least(cfg: DictConfig, key: str, low: float) -> None:
    value = OmegaConf.select(cfg, key)
    if value is None or value < low:
        raise ConfigError(key, f"must be >= {low}, got {value}")


def validate(cfg: DictConfig) -> None:
    """Check values that types cannot express; raise :class:`ConfigError` on the first."""
    _at_least(cfg, "depth.layers", 1)
    _at_least(cfg, "instances", 1)
    _at_least(cfg, "train.steps", 1)
    _at_least(cfg, "train.step_size_up", 1)
    _at_least(cfg, "train.threads", 1)
    _at_least(cfg, "train.eval_every", 1)
    _at_least(cfg, "train.weight_decay", 0.0)
    hidden = OmegaConf.select(cfg, "model.hidden")
    widths = [hidden] if isinstance(hidden, int) else list(hidden) if OmegaConf.is_list(hidden) else None
    if not widths or not all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in widths):
        raise ConfigError("model.hidden", f"must be a layer width >= 1 or a list of them, got {hidden}")
    _at_least(cfg, "model.bins", 1)
    if not cfg.model.tail_bound > 0:
        raise ConfigError("model.tail_bound", f"must be > 0, got {cfg.model.tail_bound}")
    _at_least(cfg, "dependence.rows", 2)
    if not 0.0 <= cfg.dependence.discount <= 1.0:
        raise ConfigError("dependence.discount", f"must be in [0, 1], got {cfg.dependence.discount}")
    _at_least(cfg, "dataset.batch_size", 1)
    _at_least(cfg, "seed", 0)
    _at_least(cfg, "dataset.split_seed", 0)
    _at_least(cfg, "tracking.curve_points", 1)
    for key, allowed in CHOICES.items():
        if OmegaConf.select(cfg, key) not in allowed:
            raise ConfigError(key, f"must be one of {allowed}, got {OmegaConf.select(cfg, key)!r}")
    if cfg.train.patience is not None and cfg.train.patience < 1:
        raise ConfigError("train.patience", f"must be >= 1 or null, got {cfg.train.patience}")
    if cfg.train.patience is not None and cfg.dataset.validation_fraction == 0:
        raise ConfigError("train.patience", "early stopping needs a validation split: dataset.validation_fraction > 0")
    if cfg.train.clip_norm is not None and not cfg.train.clip_norm > 0:
        raise ConfigError("train.clip_norm", f"must be > 0 or null, got {cfg.train.clip_norm}")
    if not 0 < cfg.train.base_lr <= cfg.train.max_lr:
        raise ConfigError("train.base_lr", "needs 0 < train.base_lr <= train.max_lr")
    if not 0.0 <= cfg.train.momentum < 1.0:
        raise ConfigError("train.momentum", f"must be in [0, 1), got {cfg.train.momentum}")
    if not 0.0 <= cfg.dataset.validation_fraction < 1.0:
        raise ConfigError("dataset.validation_fraction", f"must be in [0, 1), got {cfg.dataset.validation_fraction}")
    if not 0.0 < cfg.dataset.test_fraction < 1.0:
        raise ConfigError("dataset.test_fraction", f"must be in (0, 1), got {cfg.dataset.test_fraction}")
    if cfg.model.m is not None and cfg.model.m < 1:
        raise ConfigError("model.m", f"must be >= 1, got {cfg.model.m}")
    if not str(cfg.tracking.experiment).strip():
        raise ConfigError("tracking.experiment", "must be a non-empty experiment name")
    if not cfg.tracking.progress_interval_s > 0:
        raise ConfigError("tracking.progress_interval_s", f"must be > 0, got {cfg.tracking.progress_interval_s}")


def validate_against_data(cfg: DictConfig, d: int, n_train: int) -> int:
    """Check the keys that depend on the data; return the resolved ``m``."""
    if d < 2:
        raise ConfigError("dataset", f"a coupling flow needs at least 2 features, the data has d={d}")
    m = d // 2 if cfg.model.m is None else cfg.model.m
    if not 1 <= m <= d - 1:
        raise ConfigError("model.m", f"must be in 1..d-1 = 1..{d - 1}, got {m}")
    if cfg.dataset.batch_size > n_train:
        raise ConfigError(
            "dataset.batch_size",
            f"{cfg.dataset.batch_size} is larger than the training split ({n_train} rows)",
        )
    return m
