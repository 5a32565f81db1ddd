"""The shipped best known structures (layout=best_known) and the moves of the search that found them.

Every shipped file is read against the real composed config of its dataset; one tiny real
job (a sqlite store in ``tmp_path``) checks that ``layout=best_known`` trains exactly it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from flowsweep.app.run import run_job
from flowsweep.structure.moves import neighbour_moves
from flowsweep.bench.structure import DATASETS
from flowsweep.config import ConfigError, register_schema
from flowsweep.data import load_dataset
from flowsweep.structure import Structure, parity_structure
from flowsweep.layouts.best_known import BEST_KNOWN_DIR, best_known, best_known_path

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted(BEST_KNOWN_DIR.glob("*.json"))


def config(*overrides: str) -> DictConfig:
    register_schema()
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("config", list(overrides))


def test_every_benchmark_ships_its_best_known_structure_at_depth_4():
    assert {best_known_path(dataset, 4) for dataset in DATASETS} <= set(SHIPPED)


@pytest.mark.parametrize("file", SHIPPED, ids=[f.stem for f in SHIPPED])
def test_a_shipped_file_is_its_datasets_structure_and_says_how_it_was_found(file):
    record = json.loads(file.read_text())
    assert file == best_known_path(record["dataset"], record["depth"])
    cfg = config(f"dataset={record['dataset']}", f"depth.layers={record['depth']}")
    d = cfg.dataset.synthetic.d
    assert record["synthetic"] == OmegaConf.to_container(cfg.dataset.synthetic)
    structure = best_known(record["dataset"], record["synthetic"], d, d // 2, record["depth"])
    assert structure == Structure.from_dict(record)
    assert record["command"].startswith(f"python -m flowsweep.bench best-known --dataset {record['dataset']} ")
    assert record["val_bpd"] <= record["runner_up"]["val_bpd"] and record["candidates_scored"] > 10


def test_layout_best_known_trains_the_shipped_structure(tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    run_job(config("dataset=synthetic_wave", "layout=best_known", "depth.layers=4", "instances=1", "train.steps=3",
                   "progress=false", f"tracking.uri={uri}"))
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("flowsweep")
    assert experiment is not None
    run = client.search_runs([experiment.experiment_id], "tags.`flowsweep.role` = 'instance'")[0]
    logged = json.loads(Path(client.download_artifacts(run.info.run_id, "masks.json", str(tmp_path))).read_text())
    assert Structure.from_dict(logged) == Structure.from_dict(json.loads(best_known_path("synthetic_wave", 4).read_text()))
    assert load_dataset(config("dataset=synthetic_wave").dataset).graph  # the table it was found on


@pytest.mark.parametrize("overrides, message", [
    (["depth.layers=3"], "no best known structure of synthetic_wave at depth 3 (known: "),
    (["dataset.synthetic.seed=1"], "synthetic_wave_L4.json was found on dataset.synthetic="),
])
def test_best_known_elsewhere_is_one_error_naming_the_layout(overrides, message, tmp_path):
    with pytest.raises(ConfigError) as error:
        run_job(config("dataset=synthetic_wave", "layout=best_known", "depth.layers=4", *overrides,
                       f"tracking.uri=sqlite:///{tmp_path / 'm.db'}"))
    assert error.value.key == "layout" and message in str(error.value) and "\n" not in str(error.value)


def test_neighbour_moves_repeat_swap_and_flip_whole_layers():
    start = parity_structure(6, 3, 3)
    moves = neighbour_moves(start, np.random.default_rng(0), swaps=4)
    layers = start.conditioning
    assert Structure(6, 3, (layers[0], layers[0], layers[2])) in moves  # layer 0 repeated over layer 1
    assert Structure(6, 3, (layers[1], layers[0], layers[2])) in moves  # layers 0 and 1 swapped
    assert start not in moves and all(s.m == 3 and s.depth == 3 for s in moves)
    assert len(set(moves)) >= 4
