"""The MLflow runs of one job: a parent run and one nested run per model instance, written
by a helper process (:mod:`flowsweep.record.mlflow_writer`) while the job computes.

Metrics are buffered per run and sent in batches (``log_batch``), because one
``log_metric`` call costs milliseconds on a sqlite store. Every run carries the tag
:data:`ROLE_TAG` (``job`` or ``instance``), so that the analysis and resume count instances
only; an instance run carries MLflow's ``mlflow.parentRunId``, so the UI nests it.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

from flowsweep.record.figures import figure_name
from flowsweep.record.mlflow_writer import MlflowWriteError, writer_for

__all__ = ["ROLE_TAG", "DIVERGED_TAG", "PHASE_TAG", "JOB", "FINISHED", "FAILED", "KILLED", "RunSpec", "RunGroup"]

#: Tag on every run flowsweep writes: ``job`` (the parent run of a job) or ``instance``.
ROLE_TAG = "flowsweep.role"
#: Tag (``true``) on the runs of a job whose every instance diverged: FAILED, yet a result.
DIVERGED_TAG = "flowsweep.all_diverged"
#: Tag on a job's parent run: what the job is doing (``structure search``, ``training``, ``done``).
PHASE_TAG = "flowsweep.phase"
#: The position of a job's parent run in its :class:`RunGroup` (instance ``i`` is at ``i``).
JOB = -1
FINISHED, FAILED, KILLED = (RunStatus.to_string(s) for s in (RunStatus.FINISHED, RunStatus.FAILED, RunStatus.KILLED))


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
    process's :class:`~flowsweep.record.mlflow_writer.MlflowWriter`: runs are created while the
    job trains, a run's metrics and figures (:meth:`figure`) while the job goes on.
    :meth:`close` waits until all of it is written and, for FINISHED runs, raises
    :class:`~flowsweep.record.mlflow_writer.MlflowWriteError` if any of it failed.
    """

    def __init__(self, client: MlflowClient, experiment_id: str, job: RunSpec, instances: Sequence[RunSpec],
                 tags: Mapping[str, str], start_time: float):
        self.client = client
        self.name = job.name
        self._experiment_id, self._fingerprint = experiment_id, tags.get("fingerprint")
        self._start_ms = int(start_time * 1000)
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
        """Points ``first_step``, ``first_step + stride``, ... of a curve; non-finite ones (steps a
        model did not train: after it stopped or diverged) are left out."""
        stamp = int(time.time() * 1000)
        self._metrics[self._position(run)].extend(
            (key, float(v), stamp, first_step + s * stride) for s, v in enumerate(values) if math.isfinite(v))

    def tag(self, run: int, key: str, value: str) -> None:
        self._tags[self._position(run)].append((key, value))

    def artifacts(self, run: int, directory: str, move: bool = False) -> None:
        """Log the files of ``directory``: copied first (the caller may delete it right away), or
        with ``move`` handed over as it is (the writer deletes it once logged).

        The run's buffered metrics go first, so they are written while the job goes on.
        """
        self.send(run)
        staged = directory
        if not move:
            staged = tempfile.mkdtemp(prefix="flowsweep-artifacts-")
            shutil.copytree(directory, staged, dirs_exist_ok=True)
        self._writer.send("artifacts", self._group, self._position(run), staged)

    def tag_artifact_uri(self, run: int, key: str, of_run: int, path: str) -> None:
        """Tag ``run`` with the URI of ``of_run``'s artifact ``path``, ``runs:/<its run id>/<path>``:
        the writer fills in the id, so the job does not wait for the runs to exist."""
        self.send(run)
        self._writer.send("tag_artifact_uri", self._group, self._position(run), key, self._position(of_run), path)

    def inputs(self, dataset: Mapping[str, str], tags: Mapping[str, str]) -> None:
        """Log ``dataset`` (the fields of an :class:`mlflow.entities.Dataset`) with input ``tags``
        as an input of every run of the group (``mlflow.log_input``)."""
        self._writer.send("inputs", self._group, dict(dataset), dict(tags))

    def figure(self, run: int, filename: str, draw: Callable[..., None], **data: Any) -> None:
        """Have the writer draw ``draw(path, **data)`` (a :func:`~flowsweep.record.figures.figure`)
        into ``filename`` and log it in ``run``, while the job goes on. ``data`` holds plain
        values (numbers, strings, lists: ``array.tolist()``); the run's buffered metrics go first."""
        self.send(run)
        self._writer.send("figure", self._group, self._position(run), filename, figure_name(draw), data)

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

    def close(self, status: str = FINISHED, wait: bool = True) -> None:
        """Write what is buffered, end every run with ``status`` and wait until all is written.

        Errors of the writer are raised for ``FINISHED`` only: a failed or interrupted
        job is ending anyway, with its own error. ``wait=False`` (for ``FINISHED``) leaves
        the writes pending, labelled with the job's run name: :func:`flowsweep.record.mlflow_writer.settle`
        waits for them; if any fails, the writer ends the runs FAILED rather than FINISHED.
        """
        end_ms = int(time.time() * 1000)
        try:
            self.flush()
            self._writer.send("terminate", self._group, status, end_ms)
            if not wait and status == FINISHED:
                self._writer.defer(self._group, self.name)
                return
            self._run_ids, errors = self._writer.sync(self._group)
        except MlflowWriteError:
            # The writer is gone (killed, crashed): end the runs from this process, so that
            # none is left RUNNING; those of a job that meant to finish end FAILED.
            self._terminate_here(FAILED if status == FINISHED else status, end_ms)
            if status == FINISHED:
                raise
            return
        if errors and status == FINISHED:
            raise MlflowWriteError(errors[0])

    def _terminate_here(self, status: str, end_ms: int) -> None:
        """End this group's runs through the job's own client (the writer cannot)."""
        try:
            run_ids = self._run_ids
            if run_ids is None:  # the writer may have created them without telling us their ids
                query = f"attributes.status = 'RUNNING' and attributes.start_time >= {self._start_ms}"
                if self._fingerprint:
                    query += f" and tags.fingerprint = '{self._fingerprint}'"
                run_ids = [r.info.run_id for r in self.client.search_runs([self._experiment_id], query,
                                                                          max_results=self._size + 1)]
            for run_id in run_ids:
                self.client.set_terminated(run_id, status, end_time=end_ms)
        except Exception:  # the store itself is gone as well: nothing left to end them with
            pass
