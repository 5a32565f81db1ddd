"""RunGroup writes through a helper process: everything arrives, in order, and failures surface."""

from __future__ import annotations


import pytest
from mlflow.entities import RunStatus

from flowsweep.mlflow_writer import MlflowWriteError, writer_for
from flowsweep.tracking import RunGroup, ensure_experiment, open_client


@pytest.fixture()
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = open_client(uri)
    return client, ensure_experiment(client, uri, "writer-test")


def test_runs_metrics_params_tags_and_artifacts_arrive(store, tmp_path):
    client, experiment = store
    runs = RunGroup(client, experiment, names=["a", "b"], params=[{"p": "1"}, {"p": "2"}], tags={"sweep_id": "s"})
    runs.curve(0, "batch_bpd", [3.0, 2.5, 2.0], first_step=1)
    runs.metric(1, "test_bpd", 4.5)
    runs.tag(1, "note", "x")
    folder = tmp_path / "art"
    folder.mkdir()
    (folder / "masks.json").write_text("{}")
    runs.artifacts(1, str(folder))
    folder.joinpath("masks.json").unlink()  # the caller may delete its folder at once
    runs.close()
    a, b = (client.get_run(run_id) for run_id in runs.run_ids)
    assert (a.info.run_name, a.data.params, a.data.tags["sweep_id"]) == ("a", {"p": "1"}, "s")
    assert [(m.step, m.value) for m in client.get_metric_history(a.info.run_id, "batch_bpd")] == [(1, 3.0), (2, 2.5), (3, 2.0)]
    assert b.data.metrics["test_bpd"] == 4.5 and b.data.tags["note"] == "x"
    assert [f.path for f in client.list_artifacts(b.info.run_id)] == ["masks.json"]
    assert {r.info.status for r in (a, b)} == {RunStatus.to_string(RunStatus.FINISHED)}


def test_failed_job_ends_its_runs_failed_without_its_buffered_metrics(store):
    client, experiment = store
    runs = RunGroup(client, experiment, names=["a"], params=[{}], tags={})
    runs.metric(0, "train_bpd", 1.0)
    runs.close(failed=True)
    run = client.get_run(runs.run_ids[0])
    assert run.info.status == RunStatus.to_string(RunStatus.FAILED) and "train_bpd" not in run.data.metrics


def test_a_rejected_write_is_raised_at_close(store):
    client, experiment = store
    runs = RunGroup(client, experiment, names=["a"], params=[{}], tags={})
    runs.metric(0, "bad key \\u0000?", 1.0)  # MLflow rejects this metric name
    with pytest.raises(MlflowWriteError, match="log"):
        runs.close()


def test_the_writer_outlives_jobs_and_ends_with_its_input(store):
    client, _ = store
    writer = writer_for(client.tracking_uri)
    assert writer is writer_for(client.tracking_uri)  # one child per process and store
    writer.close()
    assert not writer.alive
    assert writer_for(client.tracking_uri) is not writer  # a new one is started when needed


def test_bulk_metric_rows_equal_what_log_batch_writes(store):
    # The writer's bulk INSERT against MLflow's own log_batch, on the same points: the
    # same history (NaN and inf included), the same latest values, and a repeated batch
    # falls back to log_batch, which skips what is already there.
    from mlflow.entities import Metric

    from flowsweep.mlflow_writer import _BulkMetrics

    client, experiment = store
    points = [("bpd", v, 1000 + s // 2, s) for s, v in enumerate([3.0, float("nan"), 2.0, float("inf"), -1.5])]
    points += [("acc", 0.0, 1000, 0), ("acc", 1.0, 999, 0), ("acc", 1.0, 999, 0)]  # a duplicate point
    bulk = _BulkMetrics(client)
    assert bulk.enabled
    ours, theirs = (client.create_run(experiment).info.run_id for _ in range(2))
    assert bulk.log(ours, points)
    client.log_batch(theirs, metrics=[Metric(*p) for p in points])

    def history(run_id):
        return {key: sorted((m.step, m.timestamp, repr(m.value)) for m in client.get_metric_history(run_id, key))
                for key in ("bpd", "acc")}

    assert history(ours) == history(theirs)
    assert repr(client.get_run(ours).data.metrics) == repr(client.get_run(theirs).data.metrics)
    assert not bulk.log(ours, points[:2]) and bulk.enabled  # already there: the caller uses log_batch
