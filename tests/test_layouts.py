"""layout=file (a masks.json, or an earlier run's), layout=oracle, a layout defined outside flowsweep,
and the dependency_recall metric.

Jobs are composed by Hydra from the real ``conf/`` and run with :func:`run_job` into a
sqlite store in ``tmp_path`` (tiny budgets: the structure logged is what is tested);
one subprocess checks what a user sees for a bad file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from flowsweep.config import ConfigError, register_schema
from flowsweep.layouts import Layout, LayoutJob
from flowsweep.data import load_dataset
from flowsweep.structure.graph import dependency_recall, oracle_structure
from flowsweep.app.run import run_job
from flowsweep.structure import Structure, parity_structure

REPO = Path(__file__).resolve().parents[1]
#: synthetic_pairs cut down: 12 features, 300 rows, 3 SGD steps.
PAIRS = ["dataset=synthetic_pairs", "dataset.synthetic.n_train=300", "dataset.synthetic.n_test=50", "dataset.batch_size=6"]
SMALL = ["depth.layers=2", "instances=2", "train.steps=3", "progress=false"]


def job(tmp_path: Path, *overrides: str, data: tuple[str, ...] = tuple(PAIRS)) -> DictConfig:
    register_schema()
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("config", [f"tracking.uri=sqlite:///{tmp_path / 'm.db'}", *data, *SMALL, *overrides])


def runs_of(tmp_path: Path, layout: str) -> list:
    client = MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    experiment = client.get_experiment_by_name("flowsweep")
    if experiment is None:
        return []
    found = client.search_runs([experiment.experiment_id],
                               f"params.layout = '{layout}' and tags.`flowsweep.role` = 'instance'",
                               order_by=["attributes.start_time ASC"])
    # Jobs in the order they ran (their parent runs' starts), then instances by number.
    job_start = {pid: client.get_run(pid).info.start_time for pid in {r.data.tags["mlflow.parentRunId"] for r in found}}
    return sorted(found, key=lambda r: (job_start[r.data.tags["mlflow.parentRunId"]], int(r.data.params["instance"])))


def masks(tmp_path: Path, run) -> dict:
    client = MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    local = client.download_artifacts(run.info.run_id, "masks.json", str(tmp_path))
    return json.loads(Path(local).read_text())


def test_layout_file_and_run_id_retrain_a_runs_masks_exactly(tmp_path):
    run_job(job(tmp_path, "layout=random", "seed=3"))
    source = runs_of(tmp_path, "random")[1]  # instance 1: not what instance 0 would draw
    structure = masks(tmp_path, source)
    file = tmp_path / "given.json"
    file.write_text(json.dumps(structure))
    run_job(job(tmp_path, "layout=file", f"layout.path={file}", "seed=3"))
    run_job(job(tmp_path, "layout=file", f"layout.run_id={source.info.run_id}", "seed=3"))
    retrained = runs_of(tmp_path, "file")
    assert len(retrained) == 4 and {r.info.status for r in retrained} == {"FINISHED"}
    # A setting left unset is not logged (no "None" params): the run_id jobs have no layout.path.
    assert sorted(r.data.params.get("layout.path", "-") for r in retrained) == sorted(["-", "-", str(file), str(file)])
    assert sorted(r.data.params.get("layout.run_id", "-") for r in retrained) == sorted(
        ["-", "-", source.info.run_id, source.info.run_id])
    for run in retrained:
        assert masks(tmp_path, run) == structure
        assert run.data.metrics["dependency_recall"] == source.data.metrics["dependency_recall"]
        if run.data.params["instance"] == "1":  # the source's seed and structure: its very numbers
            assert run.data.metrics["test_bpd"] == source.data.metrics["test_bpd"]
    with pytest.raises(ConfigError, match=f"^layout.run_id: masks.json of run {source.info.run_id}: "
                                          r"the structure has depth=2, the job 3 \(depth.layers\)$"):
        run_job(job(tmp_path, "layout=file", f"layout.run_id={source.info.run_id}", "depth.layers=3"))


def test_same_seed_same_numbers_for_a_given_structure(tmp_path):
    file = tmp_path / "given.json"
    file.write_text(parity_structure(12, 6, 2).to_json())
    run_job(job(tmp_path, "layout=file", f"layout.path={file}", "seed=3"))
    run_job(job(tmp_path, "layout=parity", "seed=3"))
    given, parity = runs_of(tmp_path, "file"), runs_of(tmp_path, "parity")
    assert [r.data.metrics["test_bpd"] for r in given] == [r.data.metrics["test_bpd"] for r in parity]


def test_a_changed_file_is_a_new_job_not_a_resumed_one(tmp_path):
    file = tmp_path / "given.json"
    file.write_text(parity_structure(12, 6, 2).to_json())
    run_job(job(tmp_path, "layout=file", f"layout.path={file}"))
    run_job(job(tmp_path, "layout=file", f"layout.path={file}"))  # unchanged: skipped
    assert len(runs_of(tmp_path, "file")) == 2
    file.write_text(Structure(12, 6, ((0, 1, 2, 3, 4, 5), (6, 7, 8, 9, 10, 11))).to_json())
    run_job(job(tmp_path, "layout=file", f"layout.path={file}"))
    assert len(runs_of(tmp_path, "file")) == 4


def test_layout_oracle_trains_the_planted_oracle_with_full_recall(tmp_path):
    run_job(job(tmp_path, "layout=oracle"))
    run_job(job(tmp_path, "layout=parity"))
    cfg = job(tmp_path)
    data = load_dataset(cfg.dataset)
    expected = oracle_structure(data.graph, 12, 6, 2)
    for run in runs_of(tmp_path, "oracle"):
        assert Structure.from_dict(masks(tmp_path, run)) == expected
        assert run.data.metrics["dependency_recall"] == 1.0
    for run in runs_of(tmp_path, "parity"):  # synthetic_pairs places every pair on one parity
        assert run.data.metrics["dependency_recall"] == 0.0
    assert dependency_recall(parity_structure(12, 6, 2), data.graph) == 0.0


def test_no_recall_metric_without_a_graph(tmp_path, data_dir):
    run_job(job(tmp_path, data=("dataset=yeast", f"data_dir={data_dir}")))
    assert all("dependency_recall" not in r.data.metrics for r in runs_of(tmp_path, "parity"))


BAD_FILES = {
    "missing": (None, "no such file"),
    "not JSON": ("{d: 12", "not JSON"),
    "not an object": ("[1, 2]", 'expected an object with keys "d", "m" and "conditioning"'),
    "float index": ('{"d": 12, "m": 6, "conditioning": [[0, 1, 2, 3, 4, 5.0], [0, 1, 2, 3, 4, 5]]}',
                    '"conditioning" must be a list of lists of feature indices'),
    "index out of range": ('{"d": 12, "m": 6, "conditioning": [[0, 1, 2, 3, 4, 12], [0, 1, 2, 3, 4, 5]]}',
                           "layer 0: indices must lie in [0, 12)"),
    "repeated index": ('{"d": 12, "m": 6, "conditioning": [[0, 0, 2, 3, 4, 5], [0, 1, 2, 3, 4, 5]]}',
                       "layer 0: needs exactly 6 distinct indices"),
    "other d": (parity_structure(10, 5, 2).to_json(), "the structure has d=10, the job 12"),
    "other m": (parity_structure(12, 4, 2).to_json(), "the structure has m=4, the job 6 (model.m"),
    "other depth": (parity_structure(12, 6, 4).to_json(), "the structure has depth=4, the job 2 (depth.layers)"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_a_bad_file_is_one_error_naming_it_and_nothing_is_logged(case, tmp_path):
    text, message = BAD_FILES[case]
    file = tmp_path / "masks.json"
    if text is not None:
        file.write_text(text)
    with pytest.raises(ConfigError) as error:
        run_job(job(tmp_path, "layout=file", f"layout.path={file}"))
    assert error.value.key == "layout.path"
    assert str(error.value).startswith(f"layout.path: {file}: ") and message in str(error.value)
    assert "\n" not in str(error.value)
    assert runs_of(tmp_path, "file") == []


@pytest.mark.parametrize("overrides, key, message", [
    (["layout=file"], "layout.path", "layout=file needs either layout.path=FILE"),
    (["layout=file", "layout.path=a.json", "layout.run_id=abc"], "layout.path", "needs either"),
    (["layout=file", "layout.run_id=0123456789abcdef"], "layout.run_id", "no run 0123456789abcdef in sqlite:///"),
])
def test_layout_keys_are_checked(overrides, key, message, tmp_path):
    with pytest.raises(ConfigError) as error:
        run_job(job(tmp_path, *overrides))
    assert error.value.key == key and message in str(error.value)


def test_a_key_the_layout_does_not_have_is_refused_when_the_config_is_composed(tmp_path):
    with pytest.raises(ConfigCompositionException, match="layout.path"):
        job(tmp_path, "layout=parity", "layout.path=a.json")


@dataclass
class FirstFeatures(Layout):
    """A layout defined only here (tests the plug-in path): the first ``m`` features condition
    every ``every``-th layer, the last ``m`` the others."""

    every: int

    def structures(self, job: LayoutJob) -> list[Structure]:
        d, m = job.data.d, job.m
        layers = tuple(tuple(range(m)) if l % self.every == 0 else tuple(range(d - m, d)) for l in range(job.depth))
        return [Structure(d, m, layers)] * len(job.seeds)


def test_a_new_layout_is_one_class_plus_one_yaml(tmp_path):
    (tmp_path / "layout").mkdir()
    (tmp_path / "layout" / "first.yaml").write_text("_target_: tests.test_layouts.FirstFeatures\nname: first\nevery: 2\n")
    run_job(job(tmp_path, "layout=first", "layout.every=3", "depth.layers=3", f"hydra.searchpath=[file://{tmp_path}]"))
    runs = runs_of(tmp_path, "first")
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    first, last = list(range(6)), list(range(6, 12))
    assert all(masks(tmp_path, r)["conditioning"] == [first, last, last] for r in runs)
    assert all(r.data.params["layout.every"] == "3" and r.info.run_name.startswith("synthetic_pairs-first-L3-i")
               for r in runs)


def test_a_run_without_masks_is_one_error(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    run = client.create_run(client.create_experiment("other"))
    with pytest.raises(ConfigError, match=f"^layout.run_id: run {run.info.run_id} has no readable masks.json"):
        run_job(job(tmp_path, "layout=file", f"layout.run_id={run.info.run_id}"))


def test_layout_oracle_needs_a_planted_graph(tmp_path, data_dir):
    with pytest.raises(ConfigError, match="^layout: layout=oracle needs a dataset with planted dependencies"):
        run_job(job(tmp_path, "layout=oracle", data=("dataset=yeast", f"data_dir={data_dir}")))


def test_the_command_line_says_one_line_and_exits_2(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = str(REPO)
    file = tmp_path / "masks.json"
    file.write_text(parity_structure(12, 6, 4).to_json())
    done = subprocess.run([sys.executable, str(REPO / "main.py"), *PAIRS, *SMALL, "layout=file", f"layout.path={file}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("flowsweep: error:")]
    assert errors == [f"flowsweep: error: layout.path: {file}: the structure has depth=4, the job 2 (depth.layers)"]
    assert runs_of(tmp_path, "file") == []
