"""Checks of a multirun before its first job: every value a sweep will give a key, the
ranges of an Optuna search space, the trial count, the study's storage and the launcher's
worker count.

A sweep such as ``train.max_lr=0.01,-1`` would otherwise run its good jobs and end with
Hydra's traceback for the bad one; ``range(5,2)`` or ``n_trials=0`` would end in an
Optuna traceback. Each value is checked against its key's rule
(:data:`flowsweep.config.rules.RULES`), so the sweep stops at once with one line.
"""

from __future__ import annotations

from typing import Any, Iterable

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from omegaconf import DictConfig, OmegaConf

from flowsweep.config.checks import unknown_key, validate
from flowsweep.config.rules import Rule, rule_for
from flowsweep.config.schema import ConfigError

__all__ = ["check_sweep"]


def _check_value(key: str, rule: Rule, value: Any) -> None:
    # A sweep's value of an int key may come as a float bound of an interval: its type is Optuna's.
    rule.check(key, value)


def _check_override(override: Override, text: str) -> None:
    key = override.key_or_group
    if override.is_add() or override.is_force_add():
        unknown_key(key, text)
    rule = rule_for(key)
    value = override.value()
    if isinstance(value, IntervalSweep):
        low, high = float(value.start or 0), float(value.end or 0)
        if not low < high:
            raise ConfigError(key, f"interval({low:g}, {high:g}) is empty: its low must be below its high")
        if "log" in value.tags and not low > 0:
            raise ConfigError(key, f"a log interval needs a low > 0, got interval({low:g}, {high:g})")
        values: Iterable[Any] = (low, high)
    elif isinstance(value, RangeSweep):
        start, stop, step = float(value.start or 0), float(value.stop or 0), float(value.step or 0)
        if not step or (stop - start) * step <= 0:
            raise ConfigError(key, f"range({start:g}, {stop:g}, {step:g}) holds no value")
        values = (start,)
    elif isinstance(value, ChoiceSweep):
        values = value.list
    else:
        values = (value,) if override.is_sweep_override() is False and not override.is_delete() else ()
    if rule is not None:
        for item in values:
            _check_value(key, rule, item)


def check_sweep(config: DictConfig) -> None:
    """Check a multirun's config (with its ``hydra`` node) before any job; raise :class:`ConfigError`."""
    parser = OverridesParser.create()
    hydra = config.hydra
    job_config = OmegaConf.masked_copy(config, [str(k) for k in config if k != "hydra"])
    validate(job_config)  # the values every job shares
    texts = [str(t) for t in hydra.overrides.task]
    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    texts += [f"{key}={expression}" for key, expression in params.items()]
    for text in texts:
        if text.lstrip("+~").startswith("hydra"):
            continue
        try:
            (override,) = parser.parse_overrides([text])
        except Exception as error:  # Hydra reports its own syntax errors the same way later
            raise ConfigError(text.split("=", 1)[0].lstrip("+~"), f"cannot parse {text!r}: {error}") from None
        _check_override(override, text)
    n_trials = OmegaConf.select(config, "hydra.sweeper.n_trials")
    if n_trials is not None:
        Rule(int, 1, 10**9).check("hydra.sweeper.n_trials", n_trials)
    storage = OmegaConf.select(config, "hydra.sweeper.storage")
    if isinstance(storage, str) and "optuna" in str(OmegaConf.select(config, "hydra.sweeper._target_") or ""):
        # optuna 2.10 (what the sweeper admits) builds its own engine for a plain URL, and its
        # schema set-up is never committed under SQLAlchemy 2: a bare AssertionError later.
        raise ConfigError("hydra.sweeper.storage", f"give the study's database as hydra.sweeper.storage.url={storage} "
                                                   "(the preset's storage keeps the autocommit engine optuna 2.10 needs)")
    n_jobs = OmegaConf.select(config, "hydra.launcher.n_jobs")
    if n_jobs is not None and (isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or n_jobs == 0):
        raise ConfigError("hydra.launcher.n_jobs", f"must be >= 1 (or -1: every core), got {n_jobs!r}")
