"""The Optuna study's storage as the presets give it to the Hydra Optuna sweeper.

:class:`StudyStorage` is optuna's own :class:`optuna.storages.RDBStorage` that prints as its
database URL: the sweeper logs ``Storage: <storage>`` when a study starts, which read
``<optuna.storages._rdb.storage.RDBStorage object at 0x…>`` before. :func:`link_trial` ties
a trial and the MLflow runs of its job both ways.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import optuna

__all__ = ["StudyStorage", "link_trial"]


class StudyStorage(optuna.storages.RDBStorage):
    """An :class:`~optuna.storages.RDBStorage` whose ``str`` and ``repr`` are its ``url``."""

    def __init__(self, url: str, **kwargs: Any):
        super().__init__(url, **kwargs)
        self.shown_url = url

    def __repr__(self) -> str:
        return self.shown_url

    __str__ = __repr__


def _storage(node: Any) -> optuna.storages.RDBStorage:
    """The sweeper's ``storage`` setting opened as the sweeper opens it: a URL or a ``_target_`` node."""
    if isinstance(node, str):
        return optuna.storages.RDBStorage(node)
    from hydra.utils import instantiate

    return instantiate(node)


def link_trial(sweeper: Any, overrides: Sequence[str], run_name: str, experiment: str) -> Optional[int]:
    """The number of the study's RUNNING trial that launched this job (its parameters are among
    the job's ``overrides``, as the sweeper writes them: ``name=value``); the trial's user
    attributes get the job's MLflow run name and experiment. ``None`` where no storage is set or
    no running trial matches (then nothing is written)."""
    if sweeper.get("storage") is None or not sweeper.get("study_name"):
        return None
    given = set(overrides)
    try:
        storage = _storage(sweeper.storage)
        study_id = storage.get_study_id_from_name(str(sweeper.study_name))
        running = storage.get_all_trials(study_id, deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        matches = [t for t in running if t.params and all(f"{k}={v}" in given for k, v in t.params.items())]
        if len(matches) != 1:  # none, or twins TPE drew with the same values: say nothing rather than guess
            return None
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, matches[0].number)
        storage.set_trial_user_attr(trial_id, "mlflow_run_name", run_name)
        storage.set_trial_user_attr(trial_id, "mlflow_experiment", experiment)
    except Exception:  # the link is a convenience: a study's trial must never fail for it
        return None
    return matches[0].number
