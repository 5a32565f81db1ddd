"""Where runs go: the tracking store and the experiment.

The tracking URI is resolved once against the directory the user launched from, so
runs never scatter into Hydra's per-job output folders. In a multirun the experiment
is created by :class:`flowsweep.app.callbacks.TrackingCallback` in the launching process,
before jobs fan out. :func:`open_store` turns whatever keeps a store from being used
(an unreachable server or database, a path below a file, a deleted experiment, a store
MLflow refuses) into one :class:`~flowsweep.config.ConfigError` before any training.
The runs themselves are :mod:`flowsweep.record.run_group`'s.
"""

from __future__ import annotations

import os
import re
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional
from urllib.parse import urlparse

import mlflow
from filelock import FileLock, Timeout
from mlflow.tracking import MlflowClient

from flowsweep.config import ConfigError
from flowsweep.record.names import SWEEP_ID_ENV

__all__ = [
    "SWEEP_ID_ENV",
    "check_mlflow_sqlite",
    "resolve_tracking_uri",
    "masked",
    "open_client",
    "check_reachable",
    "ensure_experiment",
    "open_store",
]

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
    try:
        with FileLock(path + ".lock", timeout=5):
            return MlflowClient(uri)
    except Timeout:
        raise ConfigError("tracking.uri", f"cannot use the MLflow store at {uri}: its lock file {path}.lock is "
                                          f"held by another process for over 5 s") from None


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


#: The first bytes of every SQLite database file (the file format's header string).
_SQLITE_HEADER = b"SQLite format 3\x00"


def _fail_store(uri: str, why: str) -> ConfigError:
    return ConfigError("tracking.uri", f"cannot use the MLflow store at {masked(uri)}: {why}")


def check_mlflow_sqlite(uri: str, timeout_s: float = 3.0) -> bool:
    """The file of a sqlite store, if there is one, must be a SQLite database and MLflow's.

    Returns whether it holds MLflow's schema (False: no file, an empty one, or no tables,
    which MLflow fills with its schema). Raises a :class:`ConfigError` of ``tracking.uri``
    for any other file: MLflow would fail with pages of SQLAlchemy, or add its tables to
    another application's database.
    """
    path = _sqlite_path(uri)
    if path is None or not Path(path).is_file() or Path(path).stat().st_size == 0:
        return False
    with open(path, "rb") as handle:
        if handle.read(len(_SQLITE_HEADER)) != _SQLITE_HEADER:
            raise _fail_store(uri, f"{path} is not a SQLite database")
    import sqlite3

    with _sqlite_failures(uri, path, timeout_s):
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=timeout_s)
        try:
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            connection.close()
    if tables and "alembic_version" not in tables:
        raise _fail_store(uri, f"{path} is a SQLite database of another application (tables "
                               f"{sorted(tables)[:4]}), not an MLflow store")
    return bool(tables)


@contextmanager
def _sqlite_failures(uri: str, path: str, timeout_s: float) -> Iterator[None]:
    """sqlite3's errors inside the block as one line naming the file: locked, or not a database."""
    import sqlite3

    try:
        yield
    except sqlite3.OperationalError as error:
        why = f"locked by another process for over {timeout_s:g} s" if "locked" in str(error) else str(error)
        raise _fail_store(uri, f"{path}: {why}") from None
    except sqlite3.DatabaseError as error:
        raise _fail_store(uri, f"{path} is not a usable SQLite database: {error}") from None


def _check_sqlite(uri: str, timeout_s: float) -> None:
    """A sqlite store must be a file in a folder this process can write, MLflow's or empty, and not locked.

    Checked here because MLflow and the file lock would otherwise retry (a path under
    /proc, a held lock) or fail with pages of SQLAlchemy (another application's database).
    """
    path = _sqlite_path(uri)
    if path is None:  # sqlite:// or sqlite:///:memory:
        raise _fail_store(uri, "an in-memory database lives in one process only, and a job's runs are written "
                               "by a helper process; give a file, e.g. sqlite:///mlflow.db")
    folder = Path(path).parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()  # sqlite writes a journal beside the database
    except OSError as error:
        raise _fail_store(uri, f"cannot write in the folder {folder}: {error.strerror or error}") from None
    if not Path(path).is_file() or Path(path).stat().st_size == 0:
        return
    check_mlflow_sqlite(uri, timeout_s)
    if not os.access(path, os.R_OK | os.W_OK):
        raise _fail_store(uri, f"{path} is read-only (a job writes its runs there)")
    import sqlite3

    with _sqlite_failures(uri, path, timeout_s):
        connection = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=timeout_s)
        try:
            connection.execute("BEGIN IMMEDIATE")  # waits at most timeout_s for another writer
            connection.rollback()
        finally:
            connection.close()


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast on a tracking server or database server that does not answer.

    MLflow itself retries for minutes. For an HTTP server any response counts, an
    authentication error included: only a server that refuses the connection, cannot be
    resolved or stays silent for ``timeout_s`` is unreachable; a database server must
    accept a TCP connection within ``timeout_s``.
    """
    scheme = urlparse(uri).scheme
    if scheme == "sqlite":
        _check_sqlite(uri, min(timeout_s, 3.0))
        return
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
        restore = f"mlflow experiments restore --experiment-id {experiment.experiment_id}"
        raise ConfigError("tracking.experiment", f"experiment {experiment.name!r} is deleted in {masked(uri)}; "
                                                 f"restore it ({restore}) or choose another tracking.experiment")
    return experiment.experiment_id


#: MLflow's experiment tag for the kind of work an experiment holds.
_EXPERIMENT_KIND = "mlflow.experimentKind"


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
        # The UI opens an experiment of this kind on its runs table, not on its GenAI overview.
        return client.create_experiment(name, artifact_location=_artifact_location(uri, name),
                                        tags={_EXPERIMENT_KIND: "custom_model_development"})
    except mlflow.exceptions.MlflowException:
        existing = client.get_experiment_by_name(name)
        if existing is None:
            raise
        return _active(existing, uri)


def _check_artifacts(location: str, experiment: str) -> None:
    """A local artifact folder must be writable before training, not when the job logs its figures."""
    if urlparse(location).scheme not in ("", "file"):
        return
    folder = Path(urlparse(location).path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as error:
        raise ConfigError("tracking.experiment", f"the artifact location {location} of experiment {experiment!r} "
                                                 f"is not writable: {error.strerror or error}") from None


def _first_sentences(text: str, count: int = 2) -> str:
    """MLflow's messages run to paragraphs; the user's line gets their start."""
    return " ".join(re.split(r"(?<=\.)\s+", text.strip().splitlines()[0] if text.strip() else "")[:count])


def open_store(uri: str, experiment: str) -> tuple[MlflowClient, str]:
    """A client of the store at ``uri`` and the id of ``experiment`` (created if missing).

    Anything that keeps the store from taking runs is one :class:`ConfigError` naming
    ``tracking.uri`` or ``tracking.experiment``. Call :func:`check_reachable` first (a job's
    plan does, once), so that a store that does not answer fails within seconds.
    """
    try:
        client = open_client(uri)
        experiment_id = ensure_experiment(client, uri, experiment)
        _check_artifacts(client.get_experiment(experiment_id).artifact_location, experiment)
        return client, experiment_id
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
