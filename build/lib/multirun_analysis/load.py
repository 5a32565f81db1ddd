"""Read the runs of one or more sweeps from MLflow into a pandas frame, one row per model instance.

Only instance runs are read: neither a job's parent run (tag ``flowsweep.role = job``)
nor the summary runs of this analysis. FINISHED runs are analysed, and so are the runs
of a job whose every instance diverged (FAILED, tagged ``flowsweep.all_diverged``): their
divergence is the result. Other FAILED (and still RUNNING or KILLED) runs are counted and
reported, never mixed in. A run is *diverged* when it logged ``diverged=1`` or a
train/test bpd that is not a finite number: MLflow's sqlite store saves ``inf`` as the
largest float, so values above :data:`DIVERGED_ABOVE` count as infinite too.
"""

from __future__ import annotations

import os
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence
from urllib.parse import unquote, urlparse

import mlflow
import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from flowsweep.config import ConfigError
from flowsweep.record.names import STUDY_TAG, SWEEPER_TAG
from flowsweep.record.run_group import DIVERGED_TAG, ROLE_TAG
from flowsweep.record.tracking import check_mlflow_sqlite, check_reachable, resolve_tracking_uri

__all__ = ["AnalysisError", "SweepRuns", "SUMMARY_TAG", "DIVERGED_ABOVE", "LATEST", "resolve_uri", "load_runs",
           "without_studies"]

#: Tag of the summary runs ``--log-to-mlflow`` writes; such runs are never analysed.
SUMMARY_TAG = "multirun_analysis.summary"
#: bpd values above this are treated as ``inf`` (sqlite stores ``inf`` as ~1.8e308).
DIVERGED_ABOVE = 1e300
#: ``--sweep latest``: the sweep whose most recent run started last.
LATEST = "latest"


class AnalysisError(Exception):
    """Nothing to analyse (no store, experiment, sweep or runs); the message is for the user."""


@dataclass
class SweepRuns:
    """The FINISHED runs of the selected sweeps plus what was left out."""

    frame: pd.DataFrame
    uri: str
    experiment: str
    sweeps: list[str]
    ignored: dict[str, int]

    def describe(self) -> str:
        """One line for stderr: how many runs from how many sweeps, what was ignored."""
        sweeps = f"{len(self.sweeps)} sweep" + ("s" if len(self.sweeps) != 1 else "")
        text = f"{len(self.frame)} FINISHED runs from {sweeps} of experiment {self.experiment!r}"
        if self.ignored:
            text += "; ignored " + ", ".join(f"{n} {status}" for status, n in sorted(self.ignored.items()))
        return text


def resolve_uri(uri: Optional[str]) -> str:
    """Like flowsweep: ``uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///./mlflow.db``, made absolute."""
    return resolve_tracking_uri(uri, os.getcwd())


def _check_store(uri: str) -> None:
    """A local store must exist and be MLflow's (MLflow would silently create an empty one, or
    add its tables to another application's database); a server must answer."""
    parsed = urlparse(uri)
    if uri.startswith("sqlite:///"):
        path = unquote(uri[len("sqlite:///"):])
    elif parsed.scheme in ("", "file"):
        path = unquote(parsed.path)
    else:
        try:
            check_reachable(uri)
        except ConfigError as error:
            raise AnalysisError(str(error).removeprefix(f"{error.key}: ") + " (pass --tracking-uri)") from None
        return
    if path != ":memory:" and not Path(path).exists():
        raise AnalysisError(f"no MLflow store at {path} (tracking URI {uri}); pass --tracking-uri")
    if uri.startswith("sqlite:///") and path != ":memory:":
        try:  # MLflow would fail with pages of SQLAlchemy, or add its tables to another app's file
            holds_mlflow = check_mlflow_sqlite(uri)
        except ConfigError as error:
            raise AnalysisError(str(error).removeprefix(f"{error.key}: ") + " (pass --tracking-uri)") from None
        if not holds_mlflow:
            raise AnalysisError(f"no MLflow store at {path}: the database is empty (tracking URI {uri}); "
                                f"pass --tracking-uri")


@contextmanager
def _tracking_uri(uri: str) -> Iterator[None]:
    """``mlflow.search_runs`` reads the global URI (and setting it sets the env var): restore both."""
    previous_env = os.environ.get("MLFLOW_TRACKING_URI")
    previous = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)
        if previous_env is not None:
            os.environ["MLFLOW_TRACKING_URI"] = previous_env


def _quoted(value: str) -> str:
    quote = "'" if "'" not in value else '"'
    return f"{quote}{value}{quote}"


def _search(experiment_id: str, filter_string: str = "", **kwargs: Any) -> pd.DataFrame:
    """``mlflow.search_runs`` in one experiment: instance runs only (no summary, no parent runs)."""
    frame = mlflow.search_runs([experiment_id], filter_string=filter_string, **kwargs)
    if len(frame) and f"tags.{SUMMARY_TAG}" in frame.columns:
        frame = frame[frame[f"tags.{SUMMARY_TAG}"].isna()]
    if len(frame) and f"tags.{ROLE_TAG}" in frame.columns:
        frame = frame[frame[f"tags.{ROLE_TAG}"] != "job"]
    return frame


def _known_sweeps(experiment_id: str, limit: int = 5) -> str:
    frame = _search(experiment_id, "tags.sweep_id LIKE '%'", order_by=["attributes.start_time DESC"])
    known = list(dict.fromkeys(frame["tags.sweep_id"])) if len(frame) else []
    if not known:
        return "the experiment has no runs with a sweep_id tag"
    more = f" (and {len(known) - limit} more)" if len(known) > limit else ""
    return "known sweeps, newest first: " + ", ".join(known[:limit]) + more


def _resolve_sweep(experiment_id: str, sweep: str) -> tuple[str, pd.DataFrame]:
    """Runs of one sweep id; ``latest`` and paths relative to the working directory are accepted."""
    if sweep == LATEST:
        # Any run of a sweep will do (a job's run starts when its instances do), so no run is
        # filtered out after the one result was taken; summary runs carry no sweep_id.
        newest = mlflow.search_runs([experiment_id], filter_string="tags.sweep_id LIKE '%'",
                                    order_by=["attributes.start_time DESC"], max_results=1)
        if not len(newest):
            raise AnalysisError("--sweep latest: the experiment has no runs with a sweep_id tag")
        sweep = newest["tags.sweep_id"].iloc[0]
    for candidate in dict.fromkeys([sweep, os.path.abspath(sweep)]):
        frame = _search(experiment_id, f"tags.sweep_id = {_quoted(candidate)}")
        if len(frame):
            return candidate, frame
    raise AnalysisError(f"unknown sweep id {sweep!r}: {_known_sweeps(experiment_id)}")


def _mark_diverged(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    flag = pd.Series(False, index=frame.index)
    if "metrics.diverged" in frame.columns:
        flag |= frame["metrics.diverged"].fillna(0) > 0
    for key in ("metrics.train_bpd", "metrics.test_bpd"):
        if key in frame.columns:
            values = frame[key].astype(float)
            flag |= ~np.isfinite(values) | (values.abs() > DIVERGED_ABOVE)
    frame["diverged"] = flag
    return frame


def load_runs(uri: str, experiment: str, sweeps: Optional[Sequence[str]] = None) -> SweepRuns:
    """FINISHED runs of ``sweeps`` (ids or ``latest``; ``None``/empty: every run) of ``experiment``.

    Raises :class:`AnalysisError` for a missing store or experiment, an unknown sweep id,
    or when no FINISHED run remains.
    """
    _check_store(uri)
    found = MlflowClient(uri).get_experiment_by_name(experiment)
    if found is None:
        raise AnalysisError(f"unknown experiment {experiment!r} in {uri}")
    with _tracking_uri(uri):
        if sweeps:
            parts = dict(_resolve_sweep(found.experiment_id, s) for s in dict.fromkeys(sweeps))
            frame = pd.concat(parts.values(), ignore_index=True)
        else:
            frame = _search(found.experiment_id)
    if not len(frame):
        raise AnalysisError(f"experiment {experiment!r} has no runs in {uri}")
    selected = list(parts) if sweeps else list(dict.fromkeys(frame.get("tags.sweep_id", pd.Series()).dropna()))
    kept = frame["status"] == "FINISHED"
    if f"tags.{DIVERGED_TAG}" in frame.columns:
        kept |= (frame["status"] == "FAILED") & (frame[f"tags.{DIVERGED_TAG}"] == "true")
    ignored = dict(Counter(frame.loc[~kept, "status"]))
    finished = frame[kept].reset_index(drop=True)
    if not len(finished):
        left = ", ".join(f"{n} {s}" for s, n in sorted(ignored.items()))
        raise AnalysisError(f"no FINISHED runs to analyse in experiment {experiment!r} ({left})")
    return SweepRuns(_mark_diverged(finished), uri, experiment, selected, ignored)


def without_studies(runs: SweepRuns) -> tuple[SweepRuns, list[str]]:
    """``runs`` less the trials of Optuna studies (runs tagged ``flowsweep.sweeper=optuna``), and a
    line per study left out: a study's trials are a tuning run's steps, not replicates of a grid's
    cell, and pooled in they move its mean. Where every run is a study's, nothing is left out."""
    column = f"tags.{SWEEPER_TAG}"
    if column not in runs.frame.columns:
        return runs, []
    study = runs.frame[column] == "optuna"
    if not study.any() or study.all():
        return runs, []
    names = runs.frame.get(f"tags.{STUDY_TAG}", pd.Series("", index=runs.frame.index)).fillna("")
    lines = []
    for sweep, part in runs.frame[study].groupby("tags.sweep_id", sort=True):
        label = ", ".join(sorted(set(names[part.index]) - {""})) or "unnamed"
        lines.append(f"left out Optuna study {label} ({len(part)} runs, sweep {sweep}): analyse it alone with "
                     f"--sweep {sweep}, or pool it into the tables with --pool-studies")
    kept = runs.frame[~study].reset_index(drop=True)
    sweeps = [s for s in runs.sweeps if s in set(kept["tags.sweep_id"])]
    return SweepRuns(kept, runs.uri, runs.experiment, sweeps, runs.ignored), lines
