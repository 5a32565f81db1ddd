"""Checks of a composed config that its types cannot express: each key against its rule
(:data:`flowsweep.config.rules.RULES`), the few checks that relate two keys, what the data
decides (``m``, a batch that fits, a validation split to stop on), and the command line's
overrides (keys added with ``+`` that the schema does not know, ``search.*`` keys where no
search runs). A layout checks its own keys (flowsweep.layouts). Each raises
:class:`~flowsweep.config.ConfigError` naming the offending key, before any run exists.
"""

from __future__ import annotations

from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf

from flowsweep.config import ConfigError
from flowsweep.config.paths import CONF_DIR
from flowsweep.config.rules import RULES, rule_for

__all__ = ["validate", "validate_against_data", "validate_overrides", "unknown_key", "MIN_VALIDATION_ROWS"]

#: Fewer validation rows than this cannot tell an improvement from noise (early stopping,
#: a search scored on validation).
MIN_VALIDATION_ROWS = 10

_ABSENT = object()


def _recipe_keys(cfg: DictConfig) -> list[str]:
    recipe = OmegaConf.select(cfg, "search.evaluation.recipe")
    return [f"search.evaluation.recipe.{k!s}" for k in recipe] if isinstance(recipe, DictConfig) else []


def validate(cfg: DictConfig) -> None:
    """Check every key that has a rule, then the relations between keys; raise :class:`ConfigError` on the first."""
    for key in [*RULES, *_recipe_keys(cfg)]:
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        rule = rule_for(key)
        if value is not _ABSENT and rule is not None:  # a search's key where the optimizer has it
            rule.check(key, value)
    recipe = OmegaConf.select(cfg, "search.evaluation.recipe")
    if recipe is not None and not isinstance(recipe, DictConfig):
        raise ConfigError("search.evaluation.recipe", f"must be a mapping of train.* keys, got {recipe!r}")
    hidden = OmegaConf.select(cfg, "model.hidden")
    widths = [hidden] if isinstance(hidden, int) else list(hidden) if OmegaConf.is_list(hidden) else None
    if not widths or not all(isinstance(w, int) and not isinstance(w, bool) and 1 <= w <= 65_536 for w in widths):
        raise ConfigError("model.hidden", f"must be a layer width in 1..65536 or a list of them, got {hidden}")
    if cfg.train.patience is not None and cfg.dataset.validation_fraction == 0:
        raise ConfigError("train.patience", "early stopping needs a validation split: dataset.validation_fraction > 0")
    if not cfg.train.base_lr <= cfg.train.max_lr:
        raise ConfigError("train.base_lr", "needs 0 < train.base_lr <= train.max_lr")
    if not str(cfg.tracking.experiment).strip():
        raise ConfigError("tracking.experiment", "must be a non-empty experiment name")
    for key in ("train.kernel", "search.evaluation.recipe.kernel"):
        if OmegaConf.select(cfg, key) == "cuda":
            _check_cuda(key)


def _check_cuda(key: str) -> None:
    import torch  # only where a GPU is asked for: the other checks run before torch loads

    if not torch.cuda.is_available():
        built = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise ConfigError(key, f"cuda: PyTorch {torch.__version__} ({built}) sees no CUDA GPU; "
                               "use native or torch, or install a CUDA build of PyTorch where a GPU is")


def validate_against_data(cfg: DictConfig, d: int, n_train: int, n_valid: int | None = None) -> int:
    """Check the keys that depend on the data; return the resolved ``m``.

    ``n_valid`` (the validation split's rows) must be 0 or at least :data:`MIN_VALIDATION_ROWS`.
    """
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
    if n_valid is not None and cfg.dataset.validation_fraction > 0 and n_valid < MIN_VALIDATION_ROWS:
        raise ConfigError("dataset.validation_fraction",
                          f"{cfg.dataset.validation_fraction:g} leaves {n_valid} validation rows, fewer than "
                          f"{MIN_VALIDATION_ROWS} to stop early or score on; raise it, or 0 for none "
                          f"(with train.patience=null)")
    return m


def _is_group(key: str) -> bool:
    """Whether ``key`` names a config group of ``conf/`` (``experiment``, ``hydra/launcher``...)."""
    return (CONF_DIR / key).is_dir() or key.startswith("hydra/")


def unknown_key(key: str, override: str) -> None:
    """Refuse ``override``, which adds ``key`` with ``+``, unless ``key`` names a config group."""
    if not _is_group(key):
        raise ConfigError(key, f"unknown key ({override}): neither the schema nor the chosen options have it; "
                               f"the keys are those of conf/config.yaml and its options (docs/configuration.md)")


def validate_overrides(overrides: Sequence[str], cfg: Any, searches: bool, multirun: bool = False) -> None:
    """Check the command line's (and a sweeper's) overrides of a job against what it runs.

    A key added with ``+`` or ``++`` that no config group names is a key the schema does not
    know: a typo (``+instnaces=5``) would otherwise be logged as a param and change nothing.
    ``search.*`` keys are refused where ``searches`` is false (the layout does not search) in a
    single run; in a multirun they are shared by a sweep that crosses layouts
    (``layout=parity,opt search.iterations=3``), and the fixed layouts' jobs ignore them.
    """
    for override in overrides:
        key, _, value = override.partition("=")
        added = key.startswith("+")
        key = key.lstrip("+~")
        if key.startswith("hydra.") or key == "hydra":
            continue
        if added:
            unknown_key(key, override)
        if not searches and not multirun and (key.startswith("search.") or key == "search"):
            if key == "search":
                continue  # a sweep over layouts and searches crosses them; the group alone is harmless
            layout = OmegaConf.select(cfg, "layout.name", default="?")
            raise ConfigError(key, f"is set ({key}={value}) but layout={layout} does not search; "
                                   f"only layout=opt reads the search.* keys")

