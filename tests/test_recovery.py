"""multirun_analysis's recovered share of the oracle's gain over parity and mean dependency recall.

The rule on a hand-made aggregate, then end to end: real parity, random and oracle jobs
on a small synthetic dataset into a sqlite store in a temp folder, read back by the
command line; expected numbers come straight from ``MlflowClient.search_runs``.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient

from flowsweep.config import register_schema
from flowsweep.app.run import run_job
from multirun_analysis.cli import main
from multirun_analysis.recovery import add_recovery

REPO = Path(__file__).resolve().parents[1]
JOB = ["dataset=synthetic_pairs", "dataset.synthetic.n_train=300", "dataset.synthetic.n_test=50", "dataset.batch_size=6",
       "depth.layers=2", "instances=3", "train.steps=20", "progress=false"]


def test_the_share_rule_on_a_hand_made_aggregate():
    agg = pd.DataFrame({
        "dataset": ["a", "a", "a", "b", "b", "c", "c"],
        "layout": ["parity", "random", "oracle", "parity", "random", "parity", "oracle"],
        "train_bpd_mean": [2.0, 1.5, 1.0, 3.0, 2.0, 1.0, 1.0],
        "test_bpd_mean": [2.0, 2.5, 1.2, 3.0, 2.0, 1.0, 1.0],
    })
    out = add_recovery(agg, ["dataset", "layout"], ["train", "test"])
    assert out["train_recovered_share"].tolist()[:3] == [0.0, 0.5, 1.0]
    assert out["test_recovered_share"].tolist()[:3] == pytest.approx([0.0, -0.625, 1.0])  # worse than parity: < 0
    assert out.loc[3:, "test_recovered_share"].isna().all()  # b has no oracle, c's oracle equals parity
    assert add_recovery(agg[agg["layout"] != "oracle"], ["dataset", "layout"], ["test"]).columns.tolist() == \
        agg.columns.tolist()  # no oracle anywhere: no column
    alone = add_recovery(agg[agg["dataset"] == "a"].drop(columns="dataset"), ["layout"], ["test"])
    assert alone["test_recovered_share"].tolist() == pytest.approx([0.0, -0.625, 1.0])


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("recovery")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    register_schema()
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        for layout in ("parity", "random", "oracle"):
            run_job(compose("config", [f"tracking.uri={uri}", *JOB, f"layout={layout}"]))
    return uri


def test_csv_has_the_share_and_the_mean_recall_of_each_cell(store, capsys):
    assert main(["--tracking-uri", store, "--format", "csv"]) == 0
    table = pd.read_csv(io.StringIO(capsys.readouterr().out)).set_index("layout")
    client = MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("flowsweep").experiment_id],
                              "tags.`flowsweep.role` = 'instance'")
    by_layout: dict[str, list] = {}
    for run in runs:
        by_layout.setdefault(run.data.params["layout"], []).append(run.data.metrics)
    mean = {k: np.mean([m["test_bpd"] for m in v]) for k, v in by_layout.items()}
    for layout, metrics in by_layout.items():
        expected = (mean["parity"] - mean[layout]) / (mean["parity"] - mean["oracle"])
        assert table.loc[layout, "test_recovered_share"] == pytest.approx(expected)
        assert table.loc[layout, "dependency_recall_mean"] == pytest.approx(np.mean([m["dependency_recall"] for m in metrics]))
    assert table.loc["parity", "dependency_recall_mean"] == 0.0 and table.loc["oracle", "dependency_recall_mean"] == 1.0


@pytest.mark.parametrize("fmt, marker", [("text", "share of the oracle's gain over parity recovered"),
                                         ("markdown", "### synthetic_pairs: share of the oracle's gain"),
                                         ("latex", r"100 \% (recall 1.00)")])
def test_every_format_follows_a_table_with_its_recovery_table(store, capsys, fmt, marker):
    assert main(["--tracking-uri", store, "--format", fmt]) == 0
    out = capsys.readouterr().out
    assert marker in out
    assert out.index("test bpd, mean ± std" if fmt != "latex" else r"test bpd, mean $\pm$ std") < out.index(marker)
    if fmt == "text":
        assert "0 % (recall 0.00)" in out and "100 % (recall 1.00)" in out
