"""MLflow writes in a helper process, so that a job computes while its runs are written.

Writing to MLflow is pure Python (an ORM row per metric point: about a quarter of a
millisecond each on the 2-core box), and a job logs tens of thousands of points. A
:class:`MlflowWriter` hands the calls to a child process, ``python -m
flowsweep.mlflow_writer <uri>``, which performs them in order on its own client while
the job goes on using the other core; :meth:`MlflowWriter.sync` waits until everything
sent so far is written and returns what went wrong.

Requests travel as JSON lines over the child's stdin, replies over its stdout (JSON, not
pickle: nothing the child reads can run code). The child's stdin has no other writer,
so when the job's process ends, however it ends, the child reads what was sent, writes
it, and exits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections import defaultdict
from typing import Any, BinaryIO, Optional

__all__ = ["MlflowWriter", "MlflowWriteError", "writer_for"]


class MlflowWriteError(RuntimeError):
    """The writer process could not perform a logging call (the message says which and why)."""


class MlflowWriter:
    """The job's side of a writer process for the tracking store at ``uri``.

    Calls are grouped (one group per :class:`~flowsweep.tracking.RunGroup`): a group's runs
    are created by :meth:`create_runs` and addressed by their position afterwards.
    """

    def __init__(self, uri: str):
        self.uri = uri
        self._process = subprocess.Popen([sys.executable, "-m", "flowsweep.mlflow_writer", uri],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self._lock = threading.Lock()
        self._groups = 0

    @property
    def alive(self) -> bool:
        return self._process.poll() is None

    def new_group(self) -> int:
        with self._lock:
            self._groups += 1
            return self._groups

    def send(self, op: str, group: int, *args: Any) -> None:
        """Queue one call; it is performed after every call sent before it."""
        with self._lock:
            try:
                self._process.stdin.write(_encode(op, group, args))
                self._process.stdin.flush()
            except (BrokenPipeError, OSError) as error:
                raise MlflowWriteError(f"the MLflow writer process for {self.uri} is gone: {error}") from None

    def sync(self, group: int) -> tuple[list[str], list[str]]:
        """Wait until every call sent so far is done; returns the group's run ids and errors."""
        with self._lock:
            try:
                self._process.stdin.write(_encode("sync", group, []))
                self._process.stdin.flush()
                reply = self._process.stdout.readline()
            except (BrokenPipeError, OSError) as error:
                raise MlflowWriteError(f"the MLflow writer process for {self.uri} is gone: {error}") from None
        if not reply:
            raise MlflowWriteError(f"the MLflow writer process for {self.uri} ended (exit code {self._process.wait()})")
        run_ids, errors = json.loads(reply)
        return run_ids, errors

    def close(self) -> None:
        """End the child once it has written everything (it sees the end of its input)."""
        if self._process.stdin and not self._process.stdin.closed:
            self._process.stdin.close()
        self._process.wait()


def _encode(*message: Any) -> bytes:
    return json.dumps(message).encode() + b"\n"  # floats keep inf and nan (as Infinity, NaN)


_writers: dict[str, MlflowWriter] = {}
_writers_lock = threading.Lock()


def writer_for(uri: str) -> MlflowWriter:
    """This process's writer for ``uri``, started on first use and kept for later jobs."""
    with _writers_lock:
        writer = _writers.get(uri)
        if writer is None or not writer.alive:
            writer = _writers[uri] = MlflowWriter(uri)
        return writer


class _BulkMetrics:
    """Metric points straight into a SQL tracking store, as one multi-row INSERT.

    ``MlflowClient.log_batch`` builds an ORM object per point (about 0.2 ms each); a job
    logs tens of thousands. This does what the store's own ``_log_metrics`` does — MLflow's
    validation of each key, its NaN/inf sanitising, the run's ``latest_metrics`` through
    the store's own update — with one ``executemany``: about five times faster. It reads
    store internals, so anything unexpected (another store, another MLflow) turns it off
    for good and ``log_batch`` takes over; a duplicate point falls back for that batch.
    """

    def __init__(self, client: Any):
        self.store = getattr(getattr(client, "_tracking_client", None), "store", None)
        self.enabled = type(self.store).__name__ == "SqlAlchemyStore"

    def log(self, run_id: str, metrics: list) -> bool:
        """Write ``(key, value, timestamp, step)`` points; ``False`` where the caller must use ``log_batch``."""
        if not self.enabled or not metrics:
            return False
        try:
            import sqlalchemy
            from mlflow.store.tracking.dbmodels.models import SqlMetric
            from mlflow.utils.validation import _validate_metric
        except ImportError:
            self.enabled = False
            return False
        rows, seen, latest, checked = [], set(), {}, set()
        for key, value, timestamp, step in metrics:
            if key not in checked:
                _validate_metric(key, value, timestamp, step)
                checked.add(key)
            is_nan, value = self.store.sanitize_metric_value(float(value))
            identity = (key, int(timestamp), int(step), value, is_nan)
            if identity in seen:
                continue
            seen.add(identity)
            row = dict(run_uuid=run_id, key=key, value=value, timestamp=int(timestamp), step=int(step), is_nan=is_nan)
            rows.append(row)
            old = latest.get(key)
            if old is None or (row["step"], row["timestamp"], value) > (old["step"], old["timestamp"], old["value"]):
                latest[key] = row
        try:
            with self.store.ManagedSessionMaker(read_only=False) as session:
                self.store._check_run_is_active(self.store._get_run(run_uuid=run_id, session=session))
                session.execute(sqlalchemy.insert(SqlMetric), rows)
                self.store._update_latest_metrics_if_necessary([SqlMetric(**r) for r in latest.values()], session)
                session.commit()
        except (AttributeError, TypeError):
            self.enabled = False
            return False
        except Exception as error:  # the store wraps what the database raised
            if isinstance(error, sqlalchemy.exc.IntegrityError) or isinstance(
                    error.__cause__ or error.__context__, sqlalchemy.exc.IntegrityError):
                return False  # a point already there: log_batch knows how to skip it
            raise
        return True


def _serve(uri: str, requests: BinaryIO, replies: BinaryIO) -> None:
    """The child: perform requests in order until the input ends."""
    import shutil

    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    bulk = _BulkMetrics(client)
    runs: dict[int, list[str]] = {}
    errors: dict[int, list[str]] = defaultdict(list)
    for line in requests:
        op, group, args = json.loads(line)
        if op == "sync":
            replies.write(_encode(runs.get(group, []), errors.pop(group, [])))
            replies.flush()
            continue
        try:
            if op == "create":
                experiment_id, names, params, tags = args
                runs[group] = []
                for name, run_params in zip(names, params):
                    run_id = client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
                    runs[group].append(run_id)
                    client.log_batch(run_id, params=[Param(k, v) for k, v in run_params.items()])
            elif op == "log":
                run, metrics, tags = args
                run_id = runs[group][run]
                if bulk.log(run_id, metrics):
                    metrics = []
                if metrics or tags:
                    client.log_batch(run_id, metrics=[Metric(*m) for m in metrics], tags=[RunTag(*t) for t in tags])
            elif op == "artifacts":
                run, folder = args
                try:
                    client.log_artifacts(runs[group][run], folder)
                finally:
                    shutil.rmtree(folder, ignore_errors=True)
            elif op == "terminate":
                (status,) = args
                for run_id in runs.get(group, []):
                    client.set_terminated(run_id, status)
            else:
                raise ValueError(f"unknown request {op!r}")
        except Exception as error:  # noqa: BLE001 - reported to the job at its next sync
            errors[group].append(f"{op}: {type(error).__name__}: {error}")


def main(argv: Optional[list[str]] = None) -> None:
    (uri,) = sys.argv[1:] if argv is None else argv
    # Replies get their own copy of stdout; anything a library prints goes to stderr instead.
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    _serve(uri, sys.stdin.buffer, replies)


if __name__ == "__main__":
    main()
