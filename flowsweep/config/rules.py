"""One table of what each config key may hold: its type, its bounds or its choices.

:data:`RULES` is the single place a key's admissible values are written down (the
defaults themselves live in ``conf/``); :mod:`flowsweep.config.checks` applies it to a
composed config, and :mod:`flowsweep.config.sweep` to the values of a sweep before its first
job. A key of a search (``search.*``) is checked where the chosen optimizer has it.
``search.evaluation.recipe.<k>`` follows the rule of ``train.<k>``. Adding a key is one line.

The upper bounds are there so that a mistyped number fails at once instead of allocating
for hours (``depth=100000``, ``train.steps=1099511627776``); they lie far above any value a
job of this project has used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from flowsweep.config.schema import CHOICES, ConfigError

__all__ = ["Rule", "RULES", "rule_for"]


@dataclass(frozen=True)
class Rule:
    """What one key may hold.

    ``kind`` is ``int``, ``float`` (finite; an int is fine), ``str``, ``bool`` or ``list`` (of
    ``item``-conforming values); ``low``/``high`` bound a number (``open_low``/``open_high``:
    strictly); ``choices`` are the words a ``str`` may be; ``null`` admits None.
    """

    kind: type
    low: Optional[float] = None
    high: Optional[float] = None
    open_low: bool = False
    open_high: bool = False
    null: bool = False
    choices: Optional[tuple[str, ...]] = None
    item: Optional[Rule] = None

    def check(self, key: str, value: Any) -> None:
        """Raise :class:`ConfigError` naming ``key`` unless ``value`` conforms."""
        if value is None:
            if not self.null:
                raise ConfigError(key, "must be set (null is not allowed)")
            return
        if self.kind is list:
            if isinstance(value, str) or not isinstance(value, Sequence):
                raise ConfigError(key, f"must be a list, got {value!r}")
            if self.item is not None:
                for element in value:
                    self.item.check(key, element)
            return
        if self.kind is bool:
            if not isinstance(value, bool):
                raise ConfigError(key, f"must be true or false, got {value!r}")
            return
        if self.kind is str:
            if not isinstance(value, str):
                raise ConfigError(key, f"must be a word, got {value!r}")
            if self.choices is not None and value not in self.choices:
                raise ConfigError(key, f"must be one of {self.choices}, got {value!r}")
            return
        self._check_number(key, value)

    def _check_number(self, key: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            what = "an integer" if self.kind is int else "a number"
            raise ConfigError(key, f"must be {what}, got {value!r}")
        if self.kind is int and not isinstance(value, int):
            raise ConfigError(key, f"must be an integer, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(key, f"must be a finite number, got {value}")
        if self.low is not None and (value <= self.low if self.open_low else value < self.low):
            raise ConfigError(key, f"must be {'>' if self.open_low else '>='} {self.low:g}, got {value:g}")
        if self.high is not None and (value >= self.high if self.open_high else value > self.high):
            raise ConfigError(key, f"must be {'<' if self.open_high else '<='} {self.high:g}, got {value:g}")


def _int(low: float = 0, high: float = 10**9, null: bool = False) -> Rule:
    return Rule(int, low, high, null=null)


def _real(low: Optional[float] = None, high: Optional[float] = None, open_low: bool = False,
          open_high: bool = False, null: bool = False) -> Rule:
    return Rule(float, low, high, open_low, open_high, null=null)


_SHARE = _real(0.0, 1.0)
_PROBABILITY = _real(0.0, 1.0, open_low=True)
_WORD = Rule(str)

#: Every checked key and its rule. Bounds on sizes keep a typo from allocating without end.
RULES: dict[str, Rule] = {
    "seed": _int(0, 2**63 - 1),
    "instances": _int(1, 10_000),
    "depth.layers": _int(1, 256),
    "dataset.batch_size": _int(1),
    "dataset.split_seed": _int(0, 2**63 - 1),
    "dataset.test_fraction": _real(0.0, 1.0, open_low=True, open_high=True),
    "dataset.validation_fraction": _real(0.0, 1.0, open_high=True),
    "model.m": _int(1, null=True),
    "model.bins": _int(2, 10_000),  # one bin on [-B, B] with unit end derivatives is the identity
    "model.tail_bound": _real(0.0, open_low=True),
    "dependence.rows": _int(2),
    "dependence.discount": _SHARE,
    "train.steps": _int(1, 10_000_000),
    "train.step_size_up": _int(1, 10_000_000),
    "train.threads": _int(1, 1024),
    "train.eval_every": _int(1, 10_000_000),
    "train.patience": _int(1, null=True),
    "train.base_lr": _real(0.0, 10.0, open_low=True),
    "train.max_lr": _real(0.0, 10.0, open_low=True),
    "train.momentum": _real(0.0, 1.0, open_high=True),
    "train.weight_decay": _real(0.0, 1.0),
    "train.clip_norm": _real(0.0, open_low=True, null=True),
    "tracking.curve_points": _int(1, 10_000_000),
    "tracking.progress_interval_s": _real(0.0, 86_400.0, open_low=True),
    **{key: Rule(str, choices=words) for key, words in CHOICES.items()},
    # The searches' keys (conf/search/*.yaml), where the chosen optimizer has them.
    "search.iterations": _int(0, 1_000_000),
    "search.patience": _int(1, null=True),
    "search.candidates": _int(1, 100_000),
    "search.rungs": Rule(list, item=_int(1, 10_000_000)),
    "search.eta": _int(2, 1_000),
    "search.finalists": _int(1, 100_000),
    "search.cuts": Rule(list, item=Rule(list, item=_int(1, 10_000_000))),
    "search.keep": Rule(list, item=_WORD),
    "search.references": Rule(list, item=_WORD, null=True),
    "search.margin": _real(0.0, 1_000.0),
    "search.small_split_rows": _int(0, 1_000_000_000),
    "search.small_split_margin": _real(0.0, 1_000.0),
    "search.random_share": _SHARE,
    "search.swap_p": _PROBABILITY,
    "search.geometric_p": _PROBABILITY,
    "search.explore": _SHARE,
    "search.offspring": _int(1, 100_000),
    "search.population": _int(2, 100_000),
    "search.sample": _int(1, 100_000),
    "search.reevaluate": Rule(bool),
    "search.budget": _WORD,
    "search.mutation": _WORD,
    "search.start": _WORD,
    "search.evaluation.steps": _int(1, 10_000_000),
    "search.evaluation.replicas": _int(1, 1_000),
    "search.evaluation.value": _WORD,
    "search.evaluation.warm_start": _WORD,
    "search.evaluation.final_start": _WORD,
    "search.evaluation.seeds": _WORD,
}

_RECIPE = "search.evaluation.recipe."


def rule_for(key: str) -> Optional[Rule]:
    """The rule of ``key`` (a trial recipe's key follows its ``train.*`` twin); ``None`` if unchecked."""
    if key.startswith(_RECIPE):
        return RULES.get("train." + key[len(_RECIPE):])
    return RULES.get(key)
