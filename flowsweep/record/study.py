"""The Optuna study's storage as the presets give it to the Hydra Optuna sweeper.

:class:`StudyStorage` is optuna's own :class:`optuna.storages.RDBStorage` that prints as its
database URL: the sweeper logs ``Storage: <storage>`` when a study starts, which read
``<optuna.storages._rdb.storage.RDBStorage object at 0x…>`` before.
"""

from __future__ import annotations

from typing import Any

import optuna

__all__ = ["StudyStorage"]


class StudyStorage(optuna.storages.RDBStorage):
    """An :class:`~optuna.storages.RDBStorage` whose ``str`` and ``repr`` are its ``url``."""

    def __init__(self, url: str, **kwargs: Any):
        super().__init__(url, **kwargs)
        self.shown_url = url

    def __repr__(self) -> str:
        return self.shown_url

    __str__ = __repr__
