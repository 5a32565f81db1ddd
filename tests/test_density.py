"""Trained densities as a product (flowsweep.density): every instance run keeps its model,
and the loaded model gives back the run's numbers, in raw units.

Real parts throughout: Hydra composition and the real job function on the real yeast file,
a real sqlite MLflow store in a temp folder, MLflow's own loaders.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

import flowsweep
from flowsweep.app.run import run_job
from flowsweep.config import register_schema
from flowsweep.data import load_dataset
from flowsweep.density import ModelFormatError, RowsError

REPO = Path(__file__).resolve().parents[1]
#: The loaded model scores the same float32 model-space rows with the same float32 model as the job
#: (one instance instead of K in the batched matmul, the same chunks), and both sum in float64: equal
#: to ~1e-15 bpd where the matmul rounds alike; 1e-6 bpd allows float32 rounding of a few ulps per row.
TOLERANCE_BPD = 1e-6


def job_cfg(tmp_path: Path, data_dir: Path, *overrides: str):
    register_schema()
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("config", [f"data_dir={data_dir}", f"tracking.uri=sqlite:///{tmp_path / 'm.db'}",
                                  "dataset=yeast", "depth.layers=2", "instances=2", "train.steps=40",
                                  "train.eval_every=20", "progress=false", *overrides])


def instance_runs(cfg, search_runs):
    runs = search_runs(cfg.tracking.uri, experiment_names=[cfg.tracking.experiment])
    return runs[runs["tags.flowsweep.role"] == "instance"], runs[runs["tags.flowsweep.role"] == "job"]


def raw_test_rows(cfg) -> pd.DataFrame:
    data = load_dataset(cfg.dataset, cfg.data_dir)  # raw units, dequantized as the job's
    return pd.DataFrame(data.test.numpy(), columns=data.columns)


@pytest.mark.parametrize("overrides", [
    ("model.preprocess=standardize",),
    ("model.preprocess=whiten",),
    ("model.preprocess=none", "dataset.dequantize=false", "train.max_lr=1e-3"),
    ("model.preprocess=standardize", "layout=opt", "search.candidates=4", "search.rungs=[10,20]"),
], ids=["standardize", "whiten", "none-not-dequantized", "opt"])
def test_a_loaded_model_gives_back_the_runs_test_bpd(overrides, tmp_path, data_dir, search_runs):
    cfg = job_cfg(tmp_path, data_dir, *overrides)
    run_job(cfg)
    instances, job = instance_runs(cfg, search_runs)
    test = raw_test_rows(cfg)
    for _, run in instances.iterrows():
        density = flowsweep.load(f"runs:/{run['run_id']}/model", cfg.tracking.uri)
        assert density.bpd(test) == pytest.approx(run["metrics.test_bpd"], abs=TOLERANCE_BPD)
        # columns matched by name: another order scores the same
        assert np.array_equal(density.score_samples(test[test.columns[::-1]]), density.score_samples(test))
    # the job names its best instance by validation bpd
    best = instances.sort_values("metrics.val_bpd").iloc[0]
    assert job.iloc[0]["tags.flowsweep.best_model"] == f"runs:/{best['run_id']}/model"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    """One yeast job (2 instances, standardized), its best instance's model, registered as ``yeast``."""
    tmp_path = tmp_path_factory.mktemp("density")
    cfg = job_cfg(tmp_path, data_dir, "tracking.register=yeast")
    run_job(cfg)
    return cfg, tmp_path


def best_uri(cfg, search_runs) -> str:
    _, job = instance_runs(cfg, search_runs)
    return str(job.iloc[0]["tags.flowsweep.best_model"])


def test_the_best_model_is_registered_and_loads_from_the_registry(trained, search_runs):
    cfg, _ = trained
    test = raw_test_rows(cfg)
    from_run = flowsweep.load(best_uri(cfg, search_runs), cfg.tracking.uri)
    from_registry = flowsweep.load("models:/yeast/1", cfg.tracking.uri)
    assert np.array_equal(from_run.score_samples(test), from_registry.score_samples(test))


def test_a_model_is_a_few_kb_and_needs_no_pickle(trained, search_runs):
    import mlflow

    cfg, tmp_path = trained
    mlflow.set_tracking_uri(cfg.tracking.uri)
    folder = Path(mlflow.artifacts.download_artifacts(best_uri(cfg, search_runs), dst_path=str(tmp_path / "dl")))
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 8_000
    assert not [p for p in files if p.suffix in (".pkl", ".pickle", ".pt")]
    assert "loader_module: flowsweep.density.pyfunc" in (folder / "MLmodel").read_text()
    # the folder is written from a template: MLflow reads this model's own uuid, time and size
    model = mlflow.models.Model.load(str(folder))
    assert len(model.model_uuid) == 32 and int(model.model_uuid, 16) >= 0
    assert model.model_size_bytes == sum(p.stat().st_size for p in (folder / "data" / "density").iterdir())
    assert model.utc_time_created.startswith(str(pd.Timestamp.now(tz="UTC").year))


def test_every_run_logs_its_dataset_as_an_mlflow_input(trained):
    from mlflow import MlflowClient

    cfg, _ = trained
    client = MlflowClient(cfg.tracking.uri)
    runs = client.search_runs([client.get_experiment_by_name(cfg.tracking.experiment).experiment_id])
    assert len(runs) == 3  # the job and its 2 instances
    inputs = [run.inputs.dataset_inputs for run in runs]
    assert all(len(i) == 1 for i in inputs) and len({i[0].dataset.digest for i in inputs}) == 1
    dataset, tags = inputs[0][0].dataset, inputs[0][0].tags
    assert (dataset.name, dataset.source_type) == ("yeast", "http") and len(dataset.digest) == 8
    assert json.loads(dataset.source)["url"].endswith("yeast.data")
    assert [c["name"] for c in json.loads(dataset.schema)["mlflow_colspec"]] == list(raw_test_rows(cfg).columns)
    assert json.loads(dataset.profile)["num_rows"] == 1484
    assert [(t.key, t.value) for t in tags] == [("mlflow.data.context", "training")]


def test_the_job_draws_its_best_models_samples_against_held_out_rows(trained, search_runs):
    from mlflow import MlflowClient

    from flowsweep.config.compose import compose_config
    from flowsweep.density.figure import most_dependent_pairs

    cfg, tmp_path = trained
    _, job = instance_runs(cfg, search_runs)
    client = MlflowClient(cfg.tracking.uri)
    png = Path(client.download_artifacts(job.iloc[0]["run_id"], "samples.png", str(tmp_path)))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    # the pairs shown are the most dependent ones: on a planted table, planted pairs
    data = load_dataset(compose_config(["dataset=synthetic_pairs"]).dataset)
    planted = {frozenset(pair) for pair in data.graph}
    assert all(frozenset(pair) in planted for pair in most_dependent_pairs(data.test.numpy(), 3))


def test_samples_and_latents_in_the_tables_units(trained, search_runs):
    cfg, _ = trained
    density = flowsweep.load(best_uri(cfg, search_runs), cfg.tracking.uri)
    test = raw_test_rows(cfg)
    samples = density.sample(2000, random_state=0)
    assert list(samples.columns) == list(test.columns) and len(samples) == 2000
    assert samples.equals(density.sample(2000, random_state=0))
    # raw units: the samples' means lie near the data's (yeast's columns are in [0, 1])
    assert np.abs(samples.mean() - test.mean()).max() < 0.1
    z = density.transform(test)
    assert z.shape == test.shape and abs(z.mean()) < 0.5
    assert density.score(test) == pytest.approx(density.score_samples(test).sum())
    # the outlier flag's thresholds are quantiles of the training rows' raw-unit log-densities
    data = load_dataset(cfg.dataset, cfg.data_dir)
    scores = density.score_samples(pd.DataFrame(data.train.numpy(), columns=data.columns))
    for q in (0.05, 0.5):
        assert (scores < density.outlier_threshold(q)).mean() == pytest.approx(q, abs=2 / len(scores))


def test_bad_rows_get_one_line_naming_the_column_or_row(trained, search_runs):
    cfg, _ = trained
    density = flowsweep.load(best_uri(cfg, search_runs), cfg.tracking.uri)
    test = raw_test_rows(cfg)
    with pytest.raises(RowsError, match=r"missing \['nuc'\]"):
        density.score_samples(test.drop(columns="nuc"))
    with pytest.raises(RowsError, match=r"unexpected \['extra'\]"):
        density.score_samples(test.assign(extra=1.0))
    with pytest.raises(RowsError, match=r"missing \['mcg'\], unexpected \['MCG'\]"):
        density.score_samples(test.rename(columns={"mcg": "MCG"}))
    for bad in (math.nan, math.inf):
        broken = test.copy()
        broken.iloc[3, 2] = bad
        with pytest.raises(RowsError, match=rf"row 3, column 'alm': {bad} is not a finite number"):
            density.score_samples(broken)
    with pytest.raises(RowsError, match=r"shape \(4, 3\)"):
        density.score_samples(np.zeros((4, 3)))
    # far outside the training range: scored (very low), never a crash
    far = density.score_samples(test.iloc[:2] * 1e6)
    assert far.shape == (2,) and (far < density.score_samples(test.iloc[:2])).all()


def test_another_format_version_and_a_run_without_a_model_are_one_line(trained, search_runs, tmp_path):
    import mlflow

    cfg, _ = trained
    mlflow.set_tracking_uri(cfg.tracking.uri)
    folder = Path(mlflow.artifacts.download_artifacts(best_uri(cfg, search_runs), dst_path=str(tmp_path)))
    spec = folder / "data" / "density" / "density.json"
    spec.write_text(spec.read_text().replace('"version": 1', '"version": 99'))
    with pytest.raises(ModelFormatError, match=r"density.json: format version 99; this flowsweep reads version 1"):
        flowsweep.load(str(folder))
    _, job = instance_runs(cfg, search_runs)
    with pytest.raises(ModelFormatError, match=rf"runs:/{job.iloc[0]['run_id']}/model: no model there"):
        flowsweep.load(f"runs:/{job.iloc[0]['run_id']}/model", cfg.tracking.uri)  # the parent run keeps no model


def test_model_logging_can_be_turned_off(tmp_path, data_dir, search_runs):
    import mlflow

    cfg = job_cfg(tmp_path, data_dir, "tracking.log_models=false", "instances=1", "train.steps=5")
    run_job(cfg)
    instances, job = instance_runs(cfg, search_runs)
    mlflow.set_tracking_uri(cfg.tracking.uri)
    names = [a.path for a in mlflow.MlflowClient().list_artifacts(instances.iloc[0]["run_id"])]
    assert "masks.json" in names and "model" not in names
    assert "tags.flowsweep.best_model" not in job or job["tags.flowsweep.best_model"].isna().all()


def test_fit_equals_a_main_py_job_and_its_samples_keep_the_planted_dependence(tmp_path, data_dir, search_runs):
    from flowsweep.config.compose import compose_config

    data = load_dataset(compose_config(["dataset=synthetic_pairs"]).dataset)  # 6 planted pairs on 12 features
    rows = pd.DataFrame(data.train.numpy().astype(np.float64), columns=data.columns)
    settings = {"layout": "dependence", "depth": 2, "instances": 1, "train.steps": 150, "seed": 3}
    fitted = flowsweep.FlowDensity(**settings, **{"tracking.uri": f"sqlite:///{tmp_path / 'fit.db'}"}).fit(rows)
    # the same config and seed as a main.py job of dataset=csv on the same rows, in another store
    rows.to_csv(tmp_path / "rows.csv", index=False)
    cfg = compose_config([f"tracking.uri=sqlite:///{tmp_path / 'main.db'}", "dataset=csv", "progress=false",
                          f"dataset.path={tmp_path / 'rows.csv'}", "layout=dependence", "depth='2'", "instances=1",
                          "train.steps=150", "seed=3"])
    run_job(cfg)
    job = search_runs(cfg.tracking.uri, experiment_names=["flowsweep"])
    job = job[job["tags.flowsweep.role"] == "job"].iloc[0]
    by_main = flowsweep.load(job["tags.flowsweep.best_model"], cfg.tracking.uri)
    # a CSV file's dataset input names the file, and its digest is the same for the same rows
    from mlflow import MlflowClient

    (given,) = MlflowClient(cfg.tracking.uri).get_run(job["run_id"]).inputs.dataset_inputs
    assert (given.dataset.source_type, json.loads(given.dataset.source)) == ("local", {"uri": str(tmp_path / "rows.csv")})
    test = pd.DataFrame(data.test.numpy(), columns=data.columns)
    assert np.array_equal(fitted.score_samples(test), by_main.score_samples(test))
    samples = fitted.sample(4000, random_state=0)
    rank = samples.corr(method="spearman").abs().to_numpy()
    planted = {frozenset(pair) for pair in data.graph}
    for i in range(data.d):
        for j in range(i):
            if frozenset((i, j)) in planted:
                assert rank[i, j] > 0.8  # 0.97 in the data
            else:
                assert rank[i, j] < 0.2  # 0.01 in the data
