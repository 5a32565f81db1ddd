"""MLflow bookkeeping: where runs go, a parent run per job with one nested run per model
instance, batched logging.

The tracking URI is resolved once against the directory the user launched from, so
runs never scatter into Hydra's per-job output folders. In a multirun the experiment
is created by :class:`flowsweep.callbacks.TrackingCallback` in the launching process,
before jobs fan out. :func:`open_store` turns whatever keeps a store from being used
(an unreachable server or database, a path below a file, a deleted experiment, a store
MLflow refuses) into one :class:`~flowsweep.config.ConfigError` before any training.
Metrics are buffered per run and written with ``log_batch``, because one ``log_metric``
call costs milliseconds on a sqlite store, by a helper process
(:mod:`flowsweep.mlflow_writer`) while the job computes.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence
from urllib.parse import urlparse

import mlflow
from filelock import FileLock
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

from flowsweep.callbacks import SWEEP_ID_ENV
from flowsweep.config import ConfigError
from flowsweep.mlflow_writer import MlflowWriteError, writer_for

__all__ = [
    "SWEEP_ID_ENV",
    "ROLE_TAG",
    "DIVERGED_TAG",
    "PHASE_TAG",
    "JOB",
    "FINISHED",
    "FAILED",
    "KILLED",
    "resolve_tracking_uri",
    "masked",
    "open_client",
    "check_reachable",
    "ensure_experiment",
    "open_store",
    "RunSpec",
    "RunGroup",
]

#: Tag on every run flowsweep writes: ``job`` (the parent run of a job) or ``instance``.
ROLE_TAG = "flowsweep.role"
#: Tag (``true``) on the runs of a job whose every instance diverged: FAILED, yet a result.
DIVERGED_TAG = "flowsweep.all_diverged"
#: Tag on a job's parent run: what the job is doing (``structure search``, ``training``, ``done``).
PHASE_TAG = "flowsweep.phase"
#: The position of a job's parent run in its :class:`RunGroup` (instance ``i`` is at ``i``).
JOB = -1
FINISHED, FAILED, KILLED = (RunStatus.to_string(s) for s in (RunStatus.FINISHED, RunStatus.FAILED, RunStatus.KILLED))
#: The registered ports of the databases MLflow stores runs in (for a URI that names none).
_DATABASE_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}


def resolve_tracking_uri(uri: Optional[str], base_dir: str) -> str:
    """Absolute tracking URI: ``uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<base_dir>/mlflow.db``.

    Relative sqlite and file paths are made absolute against ``base_dir``.
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///") :]
        if not os.path.isabs(path) and path != ":memory:":
            return "sqlite:///" + os.path.join(os.path.abspath(base_dir), path)
        return uri
    scheme = urlparse(uri).scheme
    if scheme in ("", "file"):
        path = uri[len("file:") :] if scheme == "file" else uri
        return Path(base_dir, path).resolve().as_uri() if not os.path.isabs(path) else uri
    return uri


def masked(uri: str) -> str:
    """``uri`` with any password hidden, for messages (a database URI may carry one)."""
    if urlparse(uri).password is None:
        return uri
    from sqlalchemy.engine import make_url

    return make_url(uri).render_as_string(hide_password=True)


def _sqlite_path(uri: str) -> Optional[str]:
    return uri[len("sqlite:///") :] if uri.startswith("sqlite:///") and not uri.endswith(":memory:") else None


def open_client(uri: str) -> MlflowClient:
    """A client of the store at ``uri``; a sqlite store is first opened under a file lock.

    Opening a fresh sqlite store creates its schema, and processes that do so at the
    same time fail ("duplicate column name"): independent jobs (SLURM array tasks, two
    terminals) may start together on a new ``mlflow.db``. The lock file lies beside it.
    """
    path = _sqlite_path(uri)
    if path is None:
        return MlflowClient(uri)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path + ".lock"):
        return MlflowClient(uri)


def _check_database(uri: str, timeout_s: float) -> None:
    """A database server must accept a TCP connection (MLflow retries an unreachable one for minutes)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(uri)
    except ArgumentError as error:
        raise ConfigError("tracking.uri", f"{masked(uri)} is not a database URI: {error}") from None
    port = url.port or _DATABASE_PORTS.get(url.get_backend_name())
    if url.host is None or port is None:  # a local socket file, or a database we do not know
        return
    try:
        socket.create_connection((url.host, port), timeout=timeout_s).close()
    except OSError as error:
        raise ConfigError("tracking.uri", f"cannot reach the database server {url.host}:{port} of {masked(uri)}: "
                                          f"{error.strerror or error}") from None


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast on a tracking server or database server that does not answer.

    MLflow itself retries for minutes. For an HTTP server any response counts, an
    authentication error included: only a server that refuses the connection, cannot be
    resolved or stays silent for ``timeout_s`` is unreachable; a database server must
    accept a TCP connection within ``timeout_s``.
    """
    scheme = urlparse(uri).scheme
    if scheme.split("+")[0] in _DATABASE_PORTS:
        _check_database(uri, timeout_s)
        return
    if scheme not in ("http", "https"):
        return
    import requests  # MLflow's own HTTP client library

    try:
        requests.get(uri, timeout=timeout_s, allow_redirects=False).close()
    except requests.RequestException as error:
        reason = getattr(error.args[0], "reason", None) if error.args else None  # requests nests the useful part
        raise ConfigError("tracking.uri", f"cannot reach the MLflow server at {masked(uri)}: "
                                          f"{type(error).__name__}: {reason or error}") from None


def _artifact_location(uri: str, experiment: str) -> Optional[str]:
    """Artifacts of a local store live beside it, not in whatever directory a job runs in."""
    if uri.startswith("sqlite:///"):
        root = Path(uri[len("sqlite:///") :]).parent
    elif urlparse(uri).scheme in ("", "file"):
        root = Path(urlparse(uri).path)
    else:
        return None
    return (root / "mlartifacts" / experiment).as_uri()


def _active(experiment: Any, uri: str) -> str:
    if experiment.lifecycle_stage != "active":
        raise ConfigError("tracking.experiment", f"experiment {experiment.name!r} is deleted in {masked(uri)}; restore it "
                                                 f"(mlflow experiments restore --experiment-id {experiment.experiment_id}) "
                                                 f"or choose another tracking.experiment")
    return experiment.experiment_id


def ensure_experiment(client: MlflowClient, uri: str, name: str) -> str:
    """Id of experiment ``name``, created if missing (tolerates a concurrent creator).

    A deleted experiment of that name is a :class:`ConfigError`: MLflow would accept the
    job's runs only to fail on them later.
    """
    if not name.strip():
        raise ConfigError("tracking.experiment", "must be a non-empty experiment name")
    existing = client.get_experiment_by_name(name)
    if existing is not None:
        return _active(existing, uri)
    try:
        return client.create_experiment(name, artifact_location=_artifact_location(uri, name))
    except mlflow.exceptions.MlflowException:
        existing = client.get_experiment_by_name(name)
        if existing is None:
            raise
        return _active(existing, uri)


def _first_sentences(text: str, count: int = 2) -> str:
    """MLflow's messages run to paragraphs; the user's line gets their start."""
    return " ".join(re.split(r"(?<=\.)\s+", text.strip().splitlines()[0] if text.strip() else "")[:count])


def open_store(uri: str, experiment: str) -> tuple[MlflowClient, str]:
    """A client of the store at ``uri`` and the id of ``experiment`` (created if missing).

    Anything that keeps the store from taking runs is one :class:`ConfigError` naming
    ``tracking.uri`` or ``tracking.experiment``.
    """
    check_reachable(uri)
    try:
        client = open_client(uri)
        return client, ensure_experiment(client, uri, experiment)
    except ConfigError:
        raise
    except (FileExistsError, NotADirectoryError) as error:  # a folder on the store's path is a file
        blocking = Path(error.filename)
        while not blocking.exists() and blocking != blocking.parent:
            blocking = blocking.parent
        raise ConfigError("tracking.uri", f"cannot use the MLflow store at {masked(uri)}: {blocking} is a file, "
                                          f"not a folder") from None
    except OSError as error:
        raise ConfigError("tracking.uri", f"cannot use the MLflow store at {masked(uri)}: {error.strerror or error}"
                                          + (f": {error.filename}" if error.filename else "")) from None
    except mlflow.exceptions.MlflowException as error:
        raise ConfigError("tracking.uri", f"cannot use the MLflow store at {masked(uri)}: "
                                          f"{_first_sentences(error.message)}") from None


@dataclass(frozen=True)
class RunSpec:
    """Name, params and tags of one run of a :class:`RunGroup`."""

    name: str
    params: Mapping[str, str]
    tags: Mapping[str, str] = field(default_factory=dict)


class RunGroup:
    """The MLflow runs of one job, written by a helper process: a parent run (position
    :data:`JOB`) and one nested run per model instance (positions ``0 .. n-1``).

    Runs are created RUNNING with ``start_time`` (the job's start, whenever the writer
    gets to them), so their Duration is the job's; :meth:`close` ends them FINISHED,
    FAILED or KILLED at the time it is called. Every call goes, in order, to this
    process's :class:`~flowsweep.mlflow_writer.MlflowWriter`: runs are created while the
    job trains, a run's metrics are written while the job draws the next run's figures.
    :meth:`close` waits until all of it is written and, for FINISHED runs, raises
    :class:`~flowsweep.mlflow_writer.MlflowWriteError` if any of it failed.
    """

    def __init__(self, client: MlflowClient, experiment_id: str, job: RunSpec, instances: Sequence[RunSpec],
                 tags: Mapping[str, str], start_time: float):
        self.client = client
        self._writer = writer_for(client.tracking_uri)
        self._group = self._writer.new_group()
        self._size = len(instances)
        specs = [[job.name, dict(job.params), {**tags, ROLE_TAG: "job", **job.tags}, None]]
        specs += [[s.name, dict(s.params), {**tags, ROLE_TAG: "instance", **s.tags}, 0] for s in instances]
        self._writer.send("create", self._group, experiment_id, specs, int(start_time * 1000))
        self._metrics: list[list[tuple]] = [[] for _ in range(self._size + 1)]
        self._tags: list[list[tuple]] = [[] for _ in range(self._size + 1)]
        self._run_ids: Optional[list[str]] = None

    def __len__(self) -> int:
        return self._size

    def _position(self, run: int) -> int:
        return 0 if run == JOB else run + 1

    def _ids(self) -> list[str]:
        if self._run_ids is None:
            self._run_ids, errors = self._writer.sync(self._group)
            if errors:
                raise MlflowWriteError(errors[0])
        return self._run_ids

    @property
    def job_run_id(self) -> str:
        """The parent run's id (waits until the writer has created the runs)."""
        return self._ids()[0]

    @property
    def run_ids(self) -> list[str]:
        """The instance runs' ids (waits until the writer has created them)."""
        return self._ids()[1:]

    def metric(self, run: int, key: str, value: float, step: int = 0) -> None:
        self._metrics[self._position(run)].append((key, float(value), int(time.time() * 1000), step))

    def curve(self, run: int, key: str, values: Iterable[float], first_step: int = 0, stride: int = 1) -> None:
        """Points ``first_step``, ``first_step + stride``, ... of a curve."""
        stamp = int(time.time() * 1000)
        self._metrics[self._position(run)].extend(
            (key, float(v), stamp, first_step + s * stride) for s, v in enumerate(values))

    def tag(self, run: int, key: str, value: str) -> None:
        self._tags[self._position(run)].append((key, value))

    def artifacts(self, run: int, directory: str) -> None:
        """Log the files of ``directory`` (copied first: the caller may delete it right away).

        The run's buffered metrics go first, so they are written while the job goes on.
        """
        self.send(run)
        staged = tempfile.mkdtemp(prefix="flowsweep-artifacts-")
        shutil.copytree(directory, staged, dirs_exist_ok=True)
        self._writer.send("artifacts", self._group, self._position(run), staged)

    def send(self, run: int) -> None:
        """Hand the buffered metrics and tags of ``run`` to the writer now."""
        position = self._position(run)
        metrics, tags = self._metrics[position], self._tags[position]
        if metrics or tags:
            self._writer.send("log", self._group, position, metrics, tags)
        self._metrics[position], self._tags[position] = [], []

    def flush(self) -> None:
        for run in (JOB, *range(self._size)):
            self.send(run)

    def close(self, status: str = FINISHED) -> None:
        """Write what is buffered, end every run with ``status`` and wait until all is written.

        Errors of the writer are raised for ``FINISHED`` only: a failed or interrupted
        job is ending anyway, with its own error.
        """
        end_ms = int(time.time() * 1000)
        try:
            self.flush()
            self._writer.send("terminate", self._group, status, end_ms)
            self._run_ids, errors = self._writer.sync(self._group)
        except MlflowWriteError:
            if status == FINISHED:
                raise
            return
        if errors and status == FINISHED:
            raise MlflowWriteError(errors[0])
