"""Score readings of the paper's open choices against its reported parity and random baselines.

The paper reports, for parity and random masks, the mean and std over 20 instances of
train and test bpd in every dataset and depth (``paper_baselines.csv`` beside this
module, Tables 2–5 of Gonsior, Mücke, Morik, LWDA'21, CC BY 4.0; the ``opt`` columns are
not given). A *reading* is one combination of the settings the paper leaves open — the
params that differ between runs of the same dataset, depth and layout. For each reading
and each reported cell (dataset, depth, layout, split) the z-score is

    z = (flowsweep's mean - the paper's mean) / max(the paper's std, STD_FLOOR)

over the reading's non-diverged instances; a cell where more than half of the
instances diverged scores ``|z| = CAP``. The reading's *score* is the mean of
``min(|z|, CAP)`` over the cells its runs cover: 0 reproduces every reported mean, 1
misses by one reported std on average. The cap keeps one hopeless cell from deciding
everything: the paper's stds range from 0.00 (sonar) to 985 bpd (turbine), so a reading
a few hundredths off on sonar would otherwise outweigh any agreement elsewhere. Lower
is better; the share of cells within one and two stds is reported beside it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from multirun_analysis.aggregate import mixed_params
from multirun_analysis.load import AnalysisError

__all__ = ["BASELINES", "CAP", "STD_FLOOR", "CELL", "load_baselines", "reading_keys", "calibration",
           "best_cells"]

BASELINES = Path(__file__).with_name("paper_baselines.csv")
#: The most a cell adds to a score; also the |z| of a cell where most instances diverged.
CAP = 10.0
#: bpd; the paper reports a std of 0.00 (sonar, parity, depth 2).
STD_FLOOR = 0.01
#: The keys of a reported cell.
CELL = ("dataset", "depth", "layout")


def load_baselines(path: Optional[Path] = None) -> pd.DataFrame:
    """``dataset, depth, split, layout, mean, std`` rows (depth as text, as the runs' params)."""
    source = Path(path) if path else BASELINES
    if not source.is_file():
        raise AnalysisError(f"--baselines: no such file {source}")
    table = pd.read_csv(source, dtype={"depth": str})
    missing = {"dataset", "depth", "split", "layout", "mean", "std"} - set(table.columns)
    if missing:
        raise AnalysisError(f"--baselines: {source} lacks the column(s) {sorted(missing)}")
    return table


def reading_keys(runs: pd.DataFrame) -> list[str]:
    """The params that set readings apart: those that differ between runs of one cell."""
    return [k for k in mixed_params(runs, list(CELL)) if not k.startswith("hydra")]


def _cells(runs: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """Per reading and cell: n, diverged, and the mean train and test bpd of the converged instances."""
    frame = pd.DataFrame({k: runs[f"params.{k}"].astype(str) for k in (*keys, *CELL)})
    for split in ("train", "test"):
        frame[split] = runs[f"metrics.{split}_bpd"].astype(float).where(~runs["diverged"])
    frame["diverged"] = runs["diverged"].astype(int)
    return frame.groupby([*keys, *CELL], sort=False).agg(
        n=("diverged", "size"), n_diverged=("diverged", "sum"), train=("train", "mean"), test=("test", "mean"),
    ).reset_index()


def calibration(runs: pd.DataFrame, baselines: pd.DataFrame,
                keys: Optional[Sequence[str]] = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(ranking, cells)``: one row per reading with its ``score`` (best first), and one row
    per reading, cell and split with flowsweep's and the paper's numbers and ``z``."""
    keys = list(reading_keys(runs) if keys is None else keys)
    cells = _cells(runs, keys).melt(id_vars=[*keys, *CELL, "n", "n_diverged"], value_vars=["train", "test"],
                                    var_name="split", value_name="flowsweep")
    cells = cells.merge(baselines.rename(columns={"mean": "paper", "std": "paper_std"}),
                        on=[*CELL, "split"], how="inner")
    if cells.empty:
        raise AnalysisError("no run matches a cell of the paper's baselines (parity or random layouts of "
                            "magic, turbine, sonar, yeast at depth 2, 4, 6, 8)")
    z = (cells["flowsweep"] - cells["paper"]) / cells["paper_std"].clip(lower=STD_FLOOR)
    failed = (cells["n_diverged"] > cells["n"] / 2) | ~np.isfinite(z)
    cells["z"] = z.where(~failed, np.sign(z.fillna(1.0)) * CAP)
    rows = []
    for _, part in cells.groupby(keys, sort=False) if keys else [((), cells)]:
        worst = part.loc[part["z"].abs().idxmax()]
        size = part["z"].abs()
        rows.append({**{k: part[k].iloc[0] for k in keys}, "score": float(size.clip(upper=CAP).mean()),
                     "cells": len(part), "within 1 std": float((size <= 1).mean()),
                     "within 2 std": float((size <= 2).mean()),
                     "worst cell": f"{worst['dataset']} L{worst['depth']} {worst['layout']} {worst['split']} "
                                   f"(z {worst['z']:+.1f})"})
    ranking = pd.DataFrame(rows).sort_values("score", kind="stable").reset_index(drop=True)
    return ranking, cells


def best_cells(ranking: pd.DataFrame, cells: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """The best reading's cells, paper beside flowsweep: one row per dataset, depth, layout and split."""
    best = np.ones(len(cells), dtype=bool)
    for key in keys:
        best &= (cells[key] == ranking.iloc[0][key]).to_numpy()
    table = cells.loc[best, [*CELL, "split", "paper", "paper_std", "flowsweep", "n_diverged", "z"]]
    order = {"turbine": 0, "magic": 1, "sonar": 2, "yeast": 3}
    return table.sort_values(["dataset", "depth", "layout", "split"], key=lambda c: c.map(order) if c.name ==
                             "dataset" else c).reset_index(drop=True)
