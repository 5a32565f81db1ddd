"""Synthetic tables with planted dependencies: the graph each family documents, placements, oracles.

Configs are composed by Hydra from the real ``conf/dataset/synthetic*.yaml`` options;
dependence is checked empirically on the generated rows (binned conditional mean and
scale), not read back from the generator.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from flowsweep.config import register_schema
from flowsweep.data import DataError, load_dataset
from flowsweep.data.synthetic import FAMILIES, generate, main, plan
from flowsweep.structure.graph import dependency_recall, node_depths, oracle_structure
from flowsweep.structure import StructureError, parity_structure

REPO = Path(__file__).resolve().parents[1]
OPTIONS = ("synthetic_pairs", "synthetic_hetero", "synthetic_tree", "synthetic_mixed", "synthetic_wide",
           "synthetic_scale", "synthetic_wave")
#: Edges of each component kind between its features (parents first), as the module docstring documents them.
EDGES = {"pair": [(0, 1)], "hetero": [(0, 1)], "tree": [(0, 2), (1, 2), (2, 3)], "distractor": [],
         "bump": [(0, 1)], "bimodal": [(0, 1)], "wave": [(0, 1)]}
KINDS = {"pairs": {"pair"}, "hetero": {"hetero"}, "tree": {"tree"}, "mixed": {"pair", "hetero", "tree"},
         "scale": {"bump", "bimodal"}, "wave": {"wave"}}


def dataset(option: str, *overrides: str) -> DictConfig:
    register_schema()
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("config", [f"dataset={option}", *overrides]).dataset


def spec(option: str = "synthetic_pairs", **values) -> dict:
    out = OmegaConf.to_container(dataset(option).synthetic)
    out.update(values)
    return out


def quantile_bins(x: np.ndarray, bins: int = 10) -> np.ndarray:
    """``[n, d]``: the quantile bin (0..bins-1) of every value within its column."""
    ranks = np.argsort(np.argsort(x, axis=0), axis=0)
    return ranks * bins // len(x)


def dependence(child: np.ndarray, which: np.ndarray, bins: int = 10) -> tuple[float, float]:
    """Share of the variance of ``child`` and of ``|child - E[child | bin]|`` explained by the
    bins ``which`` of another feature: how much it moves the child's conditional mean and scale."""
    counts = np.bincount(which, minlength=bins)

    def explained(y: np.ndarray) -> tuple[float, np.ndarray]:
        means = np.bincount(which, y, bins) / counts
        return float(np.var(means[which]) / np.var(y)), means

    mean, means = explained(child)
    return mean, explained(np.abs(child - means[which]))[0]


@pytest.mark.parametrize("option", OPTIONS)
def test_each_family_plants_its_documented_graph(option):
    cfg = dataset(option, "dataset.synthetic.n_train=20000")
    data = load_dataset(cfg)
    planted = plan(OmegaConf.to_container(cfg.synthetic))
    assert data.graph == planted.graph and data.d == cfg.synthetic.d
    assert sorted(i for _, features in planted.components for i in features) == list(range(data.d))
    kinds = [kind for kind, _ in planted.components]
    assert set(kinds) - {"distractor"} == KINDS[cfg.synthetic.family]
    assert kinds.count("distractor") >= cfg.synthetic.distractors
    x = np.concatenate([data.train.numpy(), data.valid.numpy()]).astype(np.float64)
    component = {i: c for c, (_, features) in enumerate(planted.components) for i in features}
    which = quantile_bins(x)
    for kind, features in planted.components:
        inside = [(p, c) for p, c in data.graph if p in features]
        assert sorted((features.index(p), features.index(c)) for p, c in inside) == EDGES[kind]
        for p, c in inside:
            mean, scale = dependence(x[:, c], which[:, p])
            if kind in ("hetero", "bump", "bimodal"):  # the parent sets the scale, not the mean, and no linear correlation
                assert scale > 0.1 and mean < 0.01, (option, p, c, mean, scale)
                assert abs(np.corrcoef(x[:, p], x[:, c])[0, 1]) < 0.05
            else:
                assert mean > 0.2, (option, p, c, mean)
        for c in features:
            for j in range(data.d):
                if component[j] != component[c]:  # other components and distractors: independent
                    assert max(dependence(x[:, c], which[:, j])) < 0.01, (option, c, j)
        if kind == "distractor":  # heavy tails: Student-t(3) has infinite kurtosis
            z = (x[:, features[0]] - x[:, features[0]].mean()) / x[:, features[0]].std()
            assert np.mean(z**4) - 3 > 2


@pytest.mark.parametrize("family", FAMILIES)
def test_placements_defeat_parity_or_not_for_every_d(family):
    base = spec()
    for d in range(8, 61):
        for distractors in (0, 1, 3):
            for placement, parity_recall in (("adverse", 0.0), ("friendly", 1.0), ("shuffled", None)):
                values = dict(family=family, d=d, distractors=distractors, placement=placement)
                try:
                    graph = plan({**base, **values}).graph
                except DataError:
                    assert family == "tree" and d - distractors < 4, values
                    continue
                m = d // 2
                if parity_recall is not None:
                    assert dependency_recall(parity_structure(d, m, 2), graph) == parity_recall, values
                assert dependency_recall(oracle_structure(graph, d, m, 2), graph) == 1.0, values


def test_rows_are_seeded_and_independent_of_n():
    base = spec("synthetic_mixed")
    _, train, test, graph = generate(base)
    _, train2, test2, graph2 = generate(base)
    assert np.array_equal(train, train2) and np.array_equal(test, test2) and graph == graph2
    _, longer, other_test, _ = generate({**base, "n_train": base["n_train"] + 50, "n_test": 7})
    assert np.array_equal(longer[: len(train)], train) and np.array_equal(other_test, test[:7])
    _, reseeded, _, _ = generate({**base, "seed": 1})
    assert not np.array_equal(reseeded, train)
    assert not np.isin(test[:, 0], train[:, 0]).any()  # test rows are drawn apart


@pytest.mark.parametrize("option", ["synthetic_scale", "synthetic_wave"])
def test_the_start_is_wrong_families_are_seeded_and_non_monotone(option):
    base = spec(option)
    _, train, test, graph = generate(base)
    _, again, test_again, _ = generate(base)
    assert np.array_equal(train, again) and np.array_equal(test, test_again)
    assert not np.array_equal(generate({**base, "seed": 1})[1], train)
    planted = plan(base)
    assert graph == planted.graph == load_dataset(dataset(option)).graph
    which = quantile_bins(train)
    for kind, (p, c) in planted.components:
        counts = np.bincount(which[:, p], minlength=10)
        # the child's conditional scale (bump, bimodal) or mean (wave) per decile of its parent
        y = train[:, c] if kind == "wave" else np.abs(train[:, c])
        per_bin = np.bincount(which[:, p], y, 10) / counts
        low = int(np.argmin(per_bin) if kind != "wave" else np.argmax(per_bin))
        assert 0 < low < 9, (kind, per_bin)  # the extreme sits inside: no monotone function of the parent
        if kind == "bimodal":  # two modes, at ±(1/2 + tanh²): hardly a value near 0
            assert np.mean(np.abs(train[:, c]) < 0.2) < 0.01


def test_validation_split_and_batch_rule():
    cfg = dataset("synthetic_tree")
    data = load_dataset(cfg)
    n = cfg.synthetic.n_train
    assert (len(data.train), len(data.valid), len(data.test)) == (n - round(0.1 * n), round(0.1 * n), cfg.synthetic.n_test)
    assert cfg.batch_size == n // 50
    again = load_dataset(dataset("synthetic_tree", "dataset.split_seed=1"))
    assert not np.array_equal(again.valid.numpy(), data.valid.numpy())


@pytest.mark.parametrize("override, key", [
    ("dataset.synthetic.family=ring", "dataset.synthetic.family"),
    ("dataset.synthetic.placement=random", "dataset.synthetic.placement"),
    ("dataset.synthetic.d=3", "dataset.synthetic.d"),
    ("dataset.synthetic.n_test=0", "dataset.synthetic.n_test"),
    ("dataset.columns=[0,1]", "dataset.columns"),
])
def test_impossible_synthetic_values_name_the_key(override, key):
    with pytest.raises(DataError, match=f"^{key}"):
        load_dataset(dataset("synthetic_tree", override))


def test_oracle_layer_types():
    skip = ((0, 1), (1, 2), (0, 2), (3, 4))  # 0 -> 2 skips depth 1, and still fits the first type
    assert node_depths(skip, 6) == [0, 1, 2, 0, 1, 0]
    two = oracle_structure(skip, 6, 3, 2)
    assert dependency_recall(two, skip) == 1.0 and two.conditioning[0] == (0, 3, 5)
    # m = 1 conditions one parent per layer: three types, repeated over the layers
    pairs = ((0, 1), (2, 3), (4, 5))
    three = oracle_structure(pairs, 6, 1, 3)
    assert three.conditioning == ((0,), (2,), (4,)) and dependency_recall(three, pairs) == 1.0
    assert dependency_recall(oracle_structure(pairs, 6, 1, 2), pairs) == pytest.approx(2 / 3)
    assert oracle_structure(pairs, 6, 1, 7).conditioning == three.conditioning * 2 + ((0,),)
    with pytest.raises(StructureError, match="cycle"):
        oracle_structure(((0, 1), (1, 0)), 4, 2, 2)
    with pytest.raises(StructureError, match="no edges"):
        dependency_recall(two, ())


def test_oracle_command_writes_the_masks_json_of_layout_oracle(capsys):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "flowsweep.data.synthetic", "oracle", "dataset=synthetic_tree",
                           "depth=6"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    data = load_dataset(dataset("synthetic_tree"))
    assert done.stdout.strip() == oracle_structure(data.graph, data.d, data.d // 2, 6).to_json()
    assert main(["oracle", "dataset=yeast"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.splitlines() == ["flowsweep: error: dataset yeast is not synthetic: it has no planted structure"]
