"""RunGroup writes through a helper process: a parent run with nested instance runs, every
call arrives in order, runs end with the status and times of the job, failures surface."""

from __future__ import annotations

import time

import pytest
from mlflow.entities import RunStatus

from flowsweep.record.mlflow_writer import MlflowWriteError, writer_for
from flowsweep.record.run_group import JOB, KILLED, ROLE_TAG, RunGroup, RunSpec
from flowsweep.record.tracking import ensure_experiment, open_client


@pytest.fixture()
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = open_client(uri)
    return client, ensure_experiment(client, uri, "writer-test")


def group(client, experiment, *names, start_time=None):
    return RunGroup(client, experiment, job=RunSpec("job", {"p": "0"}), instances=[RunSpec(n, {"p": n}) for n in names],
                    tags={"sweep_id": "s"}, start_time=time.time() if start_time is None else start_time)


def test_a_parent_run_with_nested_instance_runs_gets_metrics_params_tags_and_artifacts(store, tmp_path):
    client, experiment = store
    runs = group(client, experiment, "a", "b")
    runs.curve(0, "batch_bpd", [3.0, 2.5, 2.0], first_step=1, stride=5)
    runs.metric(1, "test_bpd", 4.5)
    runs.metric(JOB, "test_bpd_mean", 4.0)
    runs.tag(1, "note", "x")
    folder = tmp_path / "art"
    folder.mkdir()
    (folder / "masks.json").write_text("{}")
    runs.artifacts(1, str(folder))
    folder.joinpath("masks.json").unlink()  # the caller may delete its folder at once
    runs.close()
    job = client.get_run(runs.job_run_id)
    a, b = (client.get_run(run_id) for run_id in runs.run_ids)
    assert (job.info.run_name, job.data.tags[ROLE_TAG], job.data.metrics) == ("job", "job", {"test_bpd_mean": 4.0})
    assert "mlflow.parentRunId" not in job.data.tags
    assert (a.info.run_name, a.data.params, a.data.tags["sweep_id"], a.data.tags[ROLE_TAG]) == ("a", {"p": "a"}, "s",
                                                                                                 "instance")
    assert {r.data.tags["mlflow.parentRunId"] for r in (a, b)} == {runs.job_run_id}
    assert [(m.step, m.value) for m in client.get_metric_history(a.info.run_id, "batch_bpd")] == [(1, 3.0), (6, 2.5),
                                                                                                   (11, 2.0)]
    assert b.data.metrics["test_bpd"] == 4.5 and b.data.tags["note"] == "x"
    assert [f.path for f in client.list_artifacts(b.info.run_id)] == ["masks.json"]
    assert {r.info.status for r in (job, a, b)} == {RunStatus.to_string(RunStatus.FINISHED)}


def test_runs_start_when_the_job_started_and_end_when_it_closes(store):
    client, experiment = store
    started = time.time() - 30  # the job began half a minute before its writer got to the runs
    runs = group(client, experiment, "a", start_time=started)
    runs.send(0)
    time.sleep(0.2)
    before_close = time.time()
    runs.close(KILLED)
    for order, run in enumerate((client.get_run(runs.job_run_id), client.get_run(runs.run_ids[0]))):
        assert run.info.status == KILLED
        assert run.info.start_time == int(started * 1000) + order  # a millisecond apart: listed in order
        assert run.info.end_time >= int(before_close * 1000) - 1
        assert (run.info.end_time - run.info.start_time) / 1000 >= 30  # MLflow's Duration: the job's


def test_a_failed_job_ends_its_runs_failed_with_what_was_measured(store):
    client, experiment = store
    runs = group(client, experiment, "a")
    runs.metric(0, "train_bpd", 1.0)
    runs.close("FAILED")
    run = client.get_run(runs.run_ids[0])
    assert run.info.status == RunStatus.to_string(RunStatus.FAILED) and run.data.metrics == {"train_bpd": 1.0}


def test_a_rejected_write_is_raised_at_close(store):
    client, experiment = store
    runs = group(client, experiment, "a")
    runs.metric(0, "bad key \\u0000?", 1.0)  # MLflow rejects this metric name
    with pytest.raises(MlflowWriteError, match="log"):
        runs.close()
    # What was asked for is not all in the store: the runs end FAILED, never FINISHED.
    assert {client.get_run(run_id).info.status for run_id in (runs.job_run_id, *runs.run_ids)} == {"FAILED"}


def test_long_curves_are_written_in_batches_within_mlflow_limits(store):
    client, experiment = store
    runs = group(client, experiment, "a")
    runs.curve(0, "batch_bpd", [float(s) for s in range(2500)])  # over MLflow's 1000 metrics per log_batch
    runs.close()
    assert [m.value for m in client.get_metric_history(runs.run_ids[0], "batch_bpd")] == [float(s) for s in range(2500)]


def test_the_writer_outlives_jobs_and_ends_with_its_input(store):
    client, _ = store
    writer = writer_for(client.tracking_uri)
    assert writer is writer_for(client.tracking_uri)  # one child per process and store
    writer.close()
    assert not writer.alive
    assert writer_for(client.tracking_uri) is not writer  # a new one is started when needed
