"""Does a search find planted structure? Every layout and search on the synthetic benchmarks.

``python -m flowsweep.bench structure`` runs, for each synthetic dataset, real jobs (the
code path of ``main.py``, logging into an MLflow store) of the fixed layouts parity,
random, oracle (the planted graph's masks) and dependence, and of ``layout=opt`` with
each search, all at the default training settings and the same instance seeds. It
prints per dataset the test bpd (mean ± standard error over the instances), the share
of the oracle's gain over parity that each recovers, ``(parity - x) / (parity - oracle)``,
the mean dependency recall, the search's model-steps per instance and the job's wall
time; then one table of the recovered shares.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from flowsweep.config.compose import compose_config
from flowsweep.record.run_group import ROLE_TAG

__all__ = ["ENTRIES", "DATASETS", "Entry", "structure_tables", "main_tables"]

#: The synthetic benchmarks (conf/dataset/synthetic_*.yaml).
DATASETS = ("synthetic_pairs", "synthetic_hetero", "synthetic_tree", "synthetic_mixed", "synthetic_wide",
            "synthetic_scale", "synthetic_wave")


@dataclass(frozen=True)
class Entry:
    """One column of the benchmark: a label and the overrides that make its job."""

    label: str
    overrides: tuple[str, ...]


#: Fixed layouts first (parity and oracle define the share), then the searches; the
#: Algorithm 1 variants with the predictive evaluation spend the same 10,000 model-steps.
ENTRIES = (
    Entry("parity", ("layout=parity",)),
    Entry("random", ("layout=random",)),
    Entry("oracle", ("layout=oracle",)),
    Entry("dependence", ("layout=dependence",)),
    Entry("halving (default)", ("layout=opt", "search=halving")),
    Entry("guided", ("layout=opt", "search=guided")),
    Entry("regularized", ("layout=opt", "search=regularized")),
    Entry("evolutionary (Algorithm 1)", ("layout=opt", "search=evolutionary")),
    Entry("evolutionary, predictive evaluation", ("layout=opt", "search=evolutionary",
                                                  "search/evaluation=predictive", "search.iterations=49")),
    Entry("random search, predictive evaluation", ("layout=opt", "search=random", "search/evaluation=predictive",
                                                   "search.iterations=49")),
)


def _run(dataset: str, entry: Entry, depth: int, instances: int, uri: str, extra: Sequence[str], tag: str) -> float:
    """Run one job in this process, its runs tagged ``sweep_id=tag``; its wall seconds."""
    from flowsweep.app.run import run_job

    cfg = compose_config([f"dataset={dataset}", f"depth.layers={depth}", f"instances={instances}", "progress=false",
                          f"tracking.uri={uri}", "tracking.experiment=structure", f"tracking.sweep_id={tag}",
                          *entry.overrides, *extra])
    start = time.perf_counter()
    run_job(cfg)
    return time.perf_counter() - start


def _runs(uri: str, tag: str) -> pd.DataFrame:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("structure").experiment_id
    rows = []
    instances = f"tags.sweep_id = '{tag}' and tags.`{ROLE_TAG}` = 'instance'"
    for run in client.search_runs([experiment], filter_string=instances, max_results=5000):
        rows.append({k: run.data.metrics.get(k, math.nan)
                     for k in ("test_bpd", "dependency_recall", "diverged", "search_model_steps")})
    return pd.DataFrame(rows)


def structure_tables(datasets: Sequence[str] = DATASETS, depth: int = 4, instances: int = 8,
                     entries: Sequence[Entry] = ENTRIES, uri: Optional[str] = None,
                     extra: Sequence[str] = (), echo: bool = True) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    """Run the benchmark; per dataset its table, and the table of recovered shares."""
    folder = None if uri else tempfile.TemporaryDirectory(prefix="flowsweep-structure-")
    uri = uri or f"sqlite:///{Path(folder.name) / 'structure.db'}"
    tables, shares = {}, {}
    try:
        for dataset in datasets:
            rows = []
            for number, entry in enumerate(entries):
                tag = f"structure/{dataset}/L{depth}/{number}"
                seconds = _run(dataset, entry, depth, instances, uri, extra, tag)
                rows.append(_row(entry.label, _runs(uri, tag), seconds))
            table = _with_shares(pd.DataFrame(rows))
            tables[dataset] = table
            shares[dataset] = table.set_index("layout / search")["recovered share"]
            if echo:
                print(f"\n### {dataset}, depth {depth}, {instances} instances\n\n{table.to_markdown(index=False)}",
                      flush=True)
    finally:
        if folder is not None:
            folder.cleanup()
    return tables, pd.DataFrame(shares)


def _row(label: str, runs: pd.DataFrame, seconds: float) -> dict:
    test = runs["test_bpd"].to_numpy(float)
    ok = np.isfinite(test) & (runs["diverged"].to_numpy(float) == 0)
    values = test[ok]
    return {
        "layout / search": label,
        "test bpd": float(values.mean()) if len(values) else math.nan,
        "± se": float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else math.nan,
        "diverged": int((~ok).sum()),
        "dependency recall": float(runs["dependency_recall"].mean()),
        "search model-steps": float(runs["search_model_steps"].mean()),
        "wall s": round(seconds, 1),
    }


def _with_shares(table: pd.DataFrame) -> pd.DataFrame:
    by = table.set_index("layout / search")["test bpd"]
    gap = by["parity"] - by["oracle"]
    table.insert(3, "recovered share", (by["parity"] - table["test bpd"]) / gap if gap > 0 else math.nan)
    return table


def main_tables(datasets: Sequence[str], depth: int, instances: int, uri: Optional[str], extra: Sequence[str]) -> None:
    """The command: every table, then the shares side by side."""
    _, shares = structure_tables(datasets, depth, instances, uri=uri, extra=extra)
    print(f"\n### Recovered share of the oracle's gain over parity (depth {depth}, {instances} instances)\n")
    print(shares.to_markdown(floatfmt=".2f"))
