"""MLflow writes in a helper process, so that a job computes while its runs are written.

Writing to MLflow is pure Python (tens of microseconds per metric point through
``log_batch``), and a job logs tens of thousands of points. A :class:`MlflowWriter`
hands the calls to a child process, ``python -m flowsweep.record.mlflow_writer <uri>``, which
performs them in order on its own :class:`~mlflow.tracking.MlflowClient` while the job
goes on using the other core, and draws the job's figures there too
(:mod:`flowsweep.record.figures`); :meth:`MlflowWriter.sync` waits until everything sent so
far is written and returns what went wrong. Only MLflow's public client API is used.

Requests travel as JSON lines over the child's stdin, replies over its stdout (JSON, not
pickle: nothing the child reads can run code). A thread of the job's process feeds the
child's stdin from a queue, so that the job never blocks on a full pipe while the child
writes a large batch (a job sends megabytes of metric points at once). The child's stdin has no other writer,
so when the job's process ends, however it ends, the child reads what was sent, writes
it, and exits. Ctrl-C in a terminal signals the whole foreground process group; the child
runs in a session of its own and ignores SIGINT besides, so that the interrupted job can
still end its runs KILLED through it.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from collections import defaultdict
from typing import Any, BinaryIO, Optional

__all__ = ["MlflowWriter", "MlflowWriteError", "writer_for", "settle", "close_writers"]

#: MLflow's limits on one ``log_batch`` request (REST API reference, "Log Batch").
_METRICS_PER_BATCH = 1000
_PARAMS_TAGS_PER_BATCH = 100


class MlflowWriteError(RuntimeError):
    """The writer process could not perform a logging call (the message says which and why)."""


class MlflowWriter:
    """The job's side of a writer process for the tracking store at ``uri``.

    Calls are grouped (one group per :class:`~flowsweep.record.run_group.RunGroup`): a group's runs
    are created by one ``create`` request and addressed by their position afterwards. A
    group can be left *pending* (:meth:`defer`): the job goes on without waiting for its
    writes, and :meth:`settle` waits for them later.
    """

    def __init__(self, uri: str):
        self.uri = uri
        # A session of its own: Ctrl-C in a terminal (SIGINT to the foreground process group)
        # does not reach the child, which must outlive the job's interrupt to end its runs KILLED.
        self._process = subprocess.Popen([sys.executable, "-m", "flowsweep.record.mlflow_writer", uri],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)
        self._lock = threading.Lock()
        self._groups = 0
        self._outbox: queue.SimpleQueue[Optional[bytes]] = queue.SimpleQueue()
        self._broken: Optional[str] = None  # why the pipe to the child failed, once it has
        self._pump = threading.Thread(target=self._feed, name="flowsweep-mlflow-writer", daemon=True)
        self._pump.start()
        self._pending: dict[int, str] = {}  # group -> its label, until settled

    @property
    def alive(self) -> bool:
        return self._process.poll() is None and self._broken is None

    def new_group(self) -> int:
        with self._lock:
            self._groups += 1
            return self._groups

    def _feed(self) -> None:
        """The pump thread: queued requests into the child's stdin, in order; ``None`` closes it."""
        while (message := self._outbox.get()) is not None:
            try:
                self._process.stdin.write(message)
                self._process.stdin.flush()
            except (BrokenPipeError, OSError) as error:
                self._broken = f"the MLflow writer process for {self.uri} is gone: {error}"
                return
        self._process.stdin.close()

    def send(self, op: str, group: int, *args: Any) -> None:
        """Queue one call; it is performed after every call sent before it."""
        if self._broken:
            raise MlflowWriteError(self._broken)
        self._outbox.put(_encode(op, group, args))

    def sync(self, group: int) -> tuple[list[str], list[str]]:
        """Wait until every call sent so far is done; returns the group's run ids and errors."""
        with self._lock:  # one reply per sync, in the order of the syncs
            self.send("sync", group)
            reply = self._process.stdout.readline()
        if not reply:
            raise MlflowWriteError(self._broken or f"the MLflow writer process for {self.uri} ended "
                                                   f"(exit code {self._process.wait()})")
        run_ids, errors = json.loads(reply)
        return run_ids, errors

    def defer(self, group: int, label: str) -> None:
        """Leave ``group``'s writes pending: :meth:`settle` waits for them and reports their errors."""
        self._pending[group] = label

    def settle(self, label: Optional[str] = None) -> list[str]:
        """Wait for the pending groups (those labelled ``label`` only, if given); their errors,
        each prefixed with its group's label."""
        errors = []
        for group, name in list(self._pending.items()):
            if label is None or name == label:
                del self._pending[group]
                errors += [f"{name}: {error}" for error in self.sync(group)[1]]
        return errors

    def close(self) -> None:
        """End the child once it has written everything (it sees the end of its input)."""
        self._outbox.put(None)
        self._pump.join()
        if not self._process.stdin.closed:  # the pump stopped on a broken pipe
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


def settle(label: Optional[str] = None) -> list[str]:
    """Wait for the pending writes of every writer of this process (of groups labelled
    ``label`` only, if given); the errors of those writes."""
    with _writers_lock:
        writers = list(_writers.values())
    return [error for writer in writers for error in writer.settle(label)]


def close_writers() -> None:
    """End every writer of this process once it has written everything (waits for them)."""
    with _writers_lock:
        for writer in _writers.values():
            writer.close()
        _writers.clear()


def _chunks(items: list, size: int) -> list[list]:
    return [items[start:start + size] for start in range(0, len(items), size)]


def _serve(uri: str, requests: BinaryIO, replies: BinaryIO) -> None:
    """The child: perform requests in order until the input ends."""
    import shutil
    import tempfile
    from pathlib import Path

    from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from flowsweep.record.figures import draw

    client = MlflowClient(uri)
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
                # specs: [name, params, tags, parent position or None]; a parent comes before its children
                experiment_id, specs, start_ms = args
                runs[group] = []
                for order, (name, params, tags, parent) in enumerate(specs):
                    if parent is not None:
                        tags = {**tags, "mlflow.parentRunId": runs[group][parent]}  # MLflow's nested-run tag
                    # One millisecond apart, so that the UI, newest first, lists instance 0 first.
                    offset = 0 if parent is None else len(specs) - order
                    run_id = client.create_run(experiment_id, start_time=start_ms + offset, tags=tags,
                                               run_name=name).info.run_id
                    runs[group].append(run_id)
                    for chunk in _chunks([Param(k, v) for k, v in params.items()], _PARAMS_TAGS_PER_BATCH):
                        client.log_batch(run_id, params=chunk)
            elif op == "log":
                run, metrics, tags = args
                run_id = runs[group][run]
                for chunk in _chunks([Metric(*m) for m in metrics], _METRICS_PER_BATCH):
                    client.log_batch(run_id, metrics=chunk)
                for chunk in _chunks([RunTag(*t) for t in tags], _PARAMS_TAGS_PER_BATCH):
                    client.log_batch(run_id, tags=chunk)
            elif op == "artifacts":
                run, folder = args
                try:
                    client.log_artifacts(runs[group][run], folder)
                finally:
                    shutil.rmtree(folder, ignore_errors=True)
            elif op == "tag_artifact_uri":
                run, key, of_run, path = args
                client.set_tag(runs[group][run], key, f"runs:/{runs[group][of_run]}/{path}")
            elif op == "inputs":
                fields, tags = args
                inputs = [DatasetInput(Dataset(**fields), [InputTag(k, v) for k, v in tags.items()])]
                for run_id in runs[group]:
                    try:
                        client.log_inputs(run_id, datasets=inputs)
                    except MlflowException:
                        # Parallel jobs' first logs of one dataset race on the store's unique key
                        # (experiment, name, digest; seen with 4 joblib jobs on a server): the
                        # loser's transaction is rolled back, and again it finds the winner's row.
                        client.log_inputs(run_id, datasets=inputs)
            elif op == "figure":
                run, filename, name, data = args
                folder = tempfile.mkdtemp(prefix="flowsweep-figure-")
                try:
                    draw(name, Path(folder) / filename, data)
                    client.log_artifact(runs[group][run], str(Path(folder) / filename))
                finally:
                    shutil.rmtree(folder, ignore_errors=True)
            elif op == "terminate":
                status, end_ms = args
                if status == "FINISHED" and errors[group]:
                    status = "FAILED"  # some of the group's results are not in the store
                for run_id in runs.get(group, []):
                    client.set_terminated(run_id, status, end_time=end_ms)
            else:
                raise ValueError(f"unknown request {op!r}")
        except Exception as error:  # reported to the job at its next sync
            errors[group].append(f"{op}: {type(error).__name__}: {error}")


def main(argv: Optional[list[str]] = None) -> None:
    # Also when signalled directly: the job ends its runs through us after an interrupt.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # And SIGTERM, which a scheduler may send to every process of a job: the job ends its
    # runs KILLED through us, and we exit once its input ends.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    (uri,) = sys.argv[1:] if argv is None else argv
    # Replies get their own copy of stdout; anything a library prints goes to stderr instead.
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    _serve(uri, sys.stdin.buffer, replies)


if __name__ == "__main__":
    main()
