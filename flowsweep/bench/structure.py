"""Does a search find planted structure, and improve on its start? Every layout and search on the synthetic benchmarks.

``python -m flowsweep.bench structure`` runs, for each synthetic dataset, real jobs (the
code path of ``main.py``, logging into an MLflow store) of the fixed layouts parity,
random, oracle (the planted graph's masks), dependence and best known (the shipped
result of ``python -m flowsweep.bench best-known``), and of ``layout=opt`` with the
default search and every other, all at the default training settings and the same
instance seeds. Per dataset it prints the test bpd (mean ± standard error over the
instances); the share of the oracle's and of the best known structure's gain over
parity that each recovers, ``(parity - x) / (parity - reference)`` (best known structures
are shipped at depth 4: at other depths that row and its share are left out); for a search its
*gain over its start*, the test bpd of ``opt`` minus that of ``layout=dependence``,
instance by instance (same seeds), with the standard error of that paired difference
(negative: the search improved on its start); the mean dependency recall; the model-steps
per instance, search and final training together; and the job's wall time.

The fixed layouts are then trained again at the default search's total: ``train.steps``
set to its mean model-steps per instance (rounded up), the rest of the recipe as it is
(early stopping included, so a row may spend less; its steps column says what it spent).
The model-steps are each run's ``model_steps`` metric (search and final training); for
a job that does not log it, the final training's are read from the validation curve
(early stopping ends a model ``train.patience`` evaluations after its best one).
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from flowsweep.config.compose import compose_config
from flowsweep.layouts.best_known import best_known_path
from flowsweep.record.run_group import ROLE_TAG

__all__ = ["DATASETS", "DEFAULT_ONLY", "ENTRIES", "SAME_TOTAL", "Entry", "main_tables", "structure_tables"]

#: The synthetic benchmarks (conf/dataset/synthetic_*.yaml); the last two are where the
#: dependence layout is not the best known structure.
DATASETS = ("synthetic_pairs", "synthetic_hetero", "synthetic_tree", "synthetic_mixed", "synthetic_wide",
            "synthetic_scale", "synthetic_wave")


@dataclass(frozen=True)
class Entry:
    """One row of the benchmark: a label and the overrides that make its job."""

    label: str
    overrides: tuple[str, ...]


#: Fixed layouts first (parity, oracle and best known define the shares, dependence the
#: start), then the searches: ``layout=opt`` with the default search (``conf/config.yaml``),
#: and each named search (left out where it is the default). The Algorithm 1 variants with
#: the predictive evaluation spend the same 10,000 model-steps.
ENTRIES = (
    Entry("parity", ("layout=parity",)),
    Entry("random", ("layout=random",)),
    Entry("oracle", ("layout=oracle",)),
    Entry("best known", ("layout=best_known",)),
    Entry("dependence", ("layout=dependence",)),
    Entry("default search", ("layout=opt",)),
    Entry("halving", ("layout=opt", "search=halving")),
    # The default before the race (commit 479cdda): trial rungs of the evaluation's recipe, then a
    # final rung of three (the dependence structure and parity always among them).
    Entry("halving with trial rungs (the earlier default)", (
        "layout=opt", "search=halving", "search.candidates=32", "search.rungs=[50,250]", "search.finalists=3",
        "search.cuts=[]", "search.keep=[dependence,parity]", "search.random_share=0.25")),
    Entry("guided", ("layout=opt", "search=guided")),
    Entry("regularized", ("layout=opt", "search=regularized")),
    Entry("evolutionary (Algorithm 1)", ("layout=opt", "search=evolutionary")),
    Entry("evolutionary, predictive evaluation", ("layout=opt", "search=evolutionary",
                                                  "search/evaluation=predictive", "search.iterations=49")),
    Entry("random search, predictive evaluation", ("layout=opt", "search=random", "search/evaluation=predictive",
                                                   "search.iterations=49")),
)
#: The rows of ``--searches default``: the fixed layouts, the default search and the earlier default.
DEFAULT_ONLY = ("parity", "random", "oracle", "best known", "dependence", "default search",
                "halving with trial rungs (the earlier default)")
#: The fixed layouts trained again with the default search's total model-steps.
SAME_TOTAL = ("parity", "random", "dependence", "best known")


def _entries(entries: Sequence[Entry]) -> list[Entry]:
    """``entries`` with the default search named, and a named search that is the default left out."""
    default = str(compose_config([]).search.name)
    out = []
    for entry in entries:
        if entry.label == "default search":
            out.append(Entry(f"default search ({default})", entry.overrides))
        elif f"search={default}" not in entry.overrides or len(entry.overrides) > 2:
            out.append(entry)
    return out


def _run(dataset: str, entry: Entry, depth: int, instances: int, uri: str, extra: Sequence[str],
         tag: str) -> tuple[float, DictConfig]:
    """Run one job in this process, its runs tagged ``sweep_id=tag``; its wall seconds and config."""
    from flowsweep.app.run import run_job

    cfg = compose_config([f"dataset={dataset}", f"depth.layers={depth}", f"instances={instances}", "progress=false",
                          f"tracking.uri={uri}", "tracking.experiment=structure", f"tracking.sweep_id={tag}",
                          "rerun=true",  # every row is trained: a config the store already holds is not skipped
                          *entry.overrides, *extra])
    start = time.perf_counter()
    run_job(cfg)
    return time.perf_counter() - start, cfg


def _final_steps(history: list[tuple[int, float]], train: DictConfig) -> float:
    """Model-steps of one final training, from its validation curve ``[(step, bpd)]``."""
    steps = int(train.steps)
    if train.patience is None or not history:
        return float(steps)
    best = min(history, key=lambda point: (point[1], point[0]))[0]
    return float(min(best + int(train.patience) * int(train.eval_every), steps))


def _runs(uri: str, tag: str, train: DictConfig) -> pd.DataFrame:
    """One row per instance run: its index, bpd, recall, divergence and model-steps."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("structure")
    assert experiment is not None  # the job made it
    rows = []
    instances = f"tags.sweep_id = '{tag}' and tags.`{ROLE_TAG}` = 'instance'"
    for run in client.search_runs([experiment.experiment_id], filter_string=instances, max_results=5000):
        row = {k: run.data.metrics.get(k, math.nan)
               for k in ("test_bpd", "dependency_recall", "diverged", "search_model_steps", "model_steps")}
        if math.isnan(row["model_steps"]):  # a job that does not log its total: count it from the curve
            curve = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "val_bpd_curve")]
            search = row["search_model_steps"]
            row["model_steps"] = (0.0 if math.isnan(search) else search) + _final_steps(curve, train)
        row["instance"] = int(run.data.params["instance"])
        rows.append(row)
    return pd.DataFrame(rows).sort_values("instance").set_index("instance")


def structure_tables(datasets: Sequence[str] = DATASETS, depth: int = 4, instances: int = 8,
                     entries: Sequence[Entry] = ENTRIES, uri: str | None = None,
                     extra: Sequence[str] = (), echo: bool = True) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    """Run the benchmark; per dataset its table, and the table of recovered shares of the best known's gain."""
    folder = None if uri else tempfile.TemporaryDirectory(prefix="flowsweep-structure-")
    uri = uri or f"sqlite:///{Path(folder.name) / 'structure.db'}"
    tables, shares = {}, {}
    rows_of = _entries(entries)
    try:
        for dataset in datasets:
            runs, seconds = {}, {}
            # Best known structures are shipped for some datasets and depths only (depth 4).
            shipped = best_known_path(dataset, depth).is_file()
            rows = [e for e in rows_of if shipped or e.label != "best known"]
            for number, entry in enumerate(rows):
                tag = f"structure/{dataset}/L{depth}/{number}"
                seconds[entry.label], cfg = _run(dataset, entry, depth, instances, uri, extra, tag)
                runs[entry.label] = _runs(uri, tag, cfg.train)
            default = next(label for label in runs if label.startswith("default search"))
            total = int(math.ceil(runs[default]["model_steps"].mean()))
            for number, entry in enumerate(e for e in rows if e.label in SAME_TOTAL):
                label = f"{entry.label}, at that total"
                tag = f"structure/{dataset}/L{depth}/same/{number}"
                # After the extra overrides, so that a train.steps among them does not undo the total.
                seconds[label], cfg = _run(dataset, entry, depth, instances, uri, (*extra, f"train.steps={total}"), tag)
                runs[label] = _runs(uri, tag, cfg.train)
            table = _table(runs, seconds, {e.label for e in rows if "layout=opt" in e.overrides})
            tables[dataset] = table
            shares[dataset] = table.set_index("layout / search")["share of best known"]
            if echo:
                print(f"\n### {dataset}, depth {depth}, {instances} instances\n\n"
                      f"{table.to_markdown(index=False, floatfmt='.3f')}\n\n(at that total: train.steps={total}, "
                      "the default search's mean model-steps per instance)", flush=True)
    finally:
        if folder is not None:
            folder.cleanup()
    return tables, pd.DataFrame(shares)


def _mean_se(values: np.ndarray) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    mean = float(values.mean()) if len(values) else math.nan
    return mean, float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else math.nan


def _table(runs: dict[str, pd.DataFrame], seconds: dict[str, float], searches: set[str]) -> pd.DataFrame:
    """The dataset's table from the instance rows of every entry (see the module docstring)."""
    def test(label: str) -> pd.Series:
        frame = runs[label]
        return frame["test_bpd"].where(frame["diverged"] == 0)

    mean = {label: _mean_se(test(label).to_numpy(float))[0] for label in runs}
    parity = mean["parity"]
    rows = []
    for label, frame in runs.items():
        bpd, se = _mean_se(test(label).to_numpy(float))
        row = {"layout / search": label, "test bpd": bpd, "± se": se}
        for reference in ("oracle", "best known"):
            gap = parity - mean.get(reference, math.nan)  # no best known shipped: no share
            row[f"share of {reference}"] = (parity - bpd) / gap if gap > 0 else math.nan
        if label in searches:
            diff = (test(label) - test("dependence")).to_numpy(float)  # paired by instance (same seeds)
            row["gain over its start"], row["± se (paired)"] = _mean_se(diff)
        else:
            row["gain over its start"], row["± se (paired)"] = math.nan, math.nan
        row.update({"diverged": int((frame["diverged"] != 0).sum()),
                    "dependency recall": float(frame["dependency_recall"].mean()),
                    "model-steps per instance": int(round(frame["model_steps"].mean())),
                    "wall s": round(seconds[label], 1)})
        rows.append(row)
    return pd.DataFrame(rows)


def main_tables(datasets: Sequence[str], depth: int, instances: int, uri: str | None, extra: Sequence[str],
                searches: str = "all") -> None:
    """The command: every table, then the shares side by side; ``searches="default"``: only the
    rows of :data:`DEFAULT_ONLY`."""
    entries = ENTRIES if searches == "all" else tuple(e for e in ENTRIES if e.label in DEFAULT_ONLY)
    _, shares = structure_tables(datasets, depth, instances, entries=entries, uri=uri, extra=extra)
    print(f"\n### Recovered share of the best known structure's gain over parity (depth {depth}, "
          f"{instances} instances)\n")
    print(shares.to_markdown(floatfmt=".2f"))
