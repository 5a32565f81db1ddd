"""MLflow bookkeeping: where runs go, one run per model instance, batched logging.

The tracking URI is resolved once against the directory the user launched from, so
runs never scatter into Hydra's per-job output folders. In a multirun the experiment
is created by :class:`flowsweep.callbacks.TrackingCallback` in the launching process,
before jobs fan out. Metrics are buffered per run and written with ``log_batch``, because
one ``log_metric`` call costs milliseconds on a sqlite store, by a helper process
(:mod:`flowsweep.mlflow_writer`) while the job computes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
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
    "resolve_tracking_uri",
    "open_client",
    "check_reachable",
    "ensure_experiment",
    "RunGroup",
]


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


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast on an HTTP tracking server that does not answer (MLflow itself retries for minutes).

    Any HTTP response counts, an authentication error included: only a server that
    refuses the connection, cannot be resolved or stays silent for ``timeout_s`` is
    unreachable.
    """
    if urlparse(uri).scheme not in ("http", "https"):
        return
    import requests  # MLflow's own HTTP client library

    try:
        requests.get(uri, timeout=timeout_s, allow_redirects=False).close()
    except requests.RequestException as error:
        reason = getattr(error.args[0], "reason", None) if error.args else None  # requests nests the useful part
        raise ConfigError("tracking.uri", f"cannot reach the MLflow server at {uri}: "
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


def ensure_experiment(client: MlflowClient, uri: str, name: str) -> str:
    """Id of experiment ``name``, created if missing (tolerates a concurrent creator)."""
    existing = client.get_experiment_by_name(name)
    if existing is not None:
        return existing.experiment_id
    try:
        return client.create_experiment(name, artifact_location=_artifact_location(uri, name))
    except mlflow.exceptions.MlflowException:
        existing = client.get_experiment_by_name(name)
        if existing is None:
            raise
        return existing.experiment_id


def flatten(node: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"train": {"steps": 5}}`` → ``{"train.steps": "5"}``."""
    out: dict[str, str] = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = str(value)
    return out


class RunGroup:
    """The MLflow runs of one job, one per model instance, written by a helper process.

    Runs are created RUNNING; :meth:`close` ends them FINISHED, or FAILED when the
    job raised — a crashed job never leaves a FINISHED run behind. Every call goes, in
    order, to this process's :class:`~flowsweep.mlflow_writer.MlflowWriter`: runs are
    created while the job trains, a run's metrics are written while the job draws the
    next run's figures. :meth:`close` waits until all of it is written and raises
    :class:`~flowsweep.mlflow_writer.MlflowWriteError` if any of it failed.
    """

    def __init__(self, client: MlflowClient, experiment_id: str, names: Sequence[str],
                 params: Sequence[Mapping[str, str]], tags: Mapping[str, str]):
        self.client = client
        self._writer = writer_for(client.tracking_uri)
        self._group = self._writer.new_group()
        self._size = len(names)
        self._writer.send("create", self._group, experiment_id, list(names), [dict(p) for p in params], dict(tags))
        self._metrics: list[list[tuple]] = [[] for _ in range(self._size)]
        self._tags: list[list[tuple]] = [[] for _ in range(self._size)]
        self._run_ids: Optional[list[str]] = None

    def __len__(self) -> int:
        return self._size

    @property
    def run_ids(self) -> list[str]:
        """The runs' ids (waits until the writer has created them)."""
        if self._run_ids is None:
            self._run_ids, errors = self._writer.sync(self._group)
            if errors:
                raise MlflowWriteError(errors[0])
        return self._run_ids

    def metric(self, run: int, key: str, value: float, step: int = 0) -> None:
        self._metrics[run].append((key, float(value), int(time.time() * 1000), step))

    def curve(self, run: int, key: str, values: Iterable[float], first_step: int = 0) -> None:
        stamp = int(time.time() * 1000)
        self._metrics[run].extend((key, float(v), stamp, first_step + s) for s, v in enumerate(values))

    def tag(self, run: int, key: str, value: str) -> None:
        self._tags[run].append((key, value))

    def artifacts(self, run: int, directory: str) -> None:
        """Log the files of ``directory`` (copied first: the caller may delete it right away).

        The run's buffered metrics go first, so they are written while the job goes on.
        """
        self._send(run)
        staged = tempfile.mkdtemp(prefix="flowsweep-artifacts-")
        shutil.copytree(directory, staged, dirs_exist_ok=True)
        self._writer.send("artifacts", self._group, run, staged)

    def _send(self, run: int) -> None:
        metrics, tags = self._metrics[run], self._tags[run]
        if metrics or tags:
            self._writer.send("log", self._group, run, metrics, tags)
        self._metrics[run], self._tags[run] = [], []

    def flush(self) -> None:
        for run in range(self._size):
            self._send(run)

    def close(self, failed: bool = False) -> None:
        status = RunStatus.to_string(RunStatus.FAILED if failed else RunStatus.FINISHED)
        if not failed:
            self.flush()
        self._writer.send("terminate", self._group, status)
        run_ids, errors = self._writer.sync(self._group)
        self._run_ids = run_ids
        if errors and not failed:
            raise MlflowWriteError(errors[0])
