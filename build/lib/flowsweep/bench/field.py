"""When does training rank structures where they converge? The default search's field, trained to the end.

``python -m flowsweep.bench field`` builds, for each instance of each dataset, the field
the default search starts from (``search.candidates`` structures: the dependence structure,
parity, other readings of the dependence, whole-layer changes of it, swaps) and trains every
structure of it as the final model is trained (``train.*``, early stopping on the
validation split, the instance's seed). Per dataset it prints, over the instances:

- the Spearman correlation between each structure's best validation bpd *so far* after
  ``s`` steps and its converged one (where a race may cut: a value that ranks as the end
  does can prune), for several ``s``;
- the converged validation bpd of the dependence structure (the search's start), of the
  best of the field, and how many structures of the field beat the start;
- for each cut schedule asked (``--cuts``; default: ``search.cuts`` of conf/search/halving.yaml),
  the cuts replayed on those curves: the share of the field's best validation gain over parity
  that the structure the cuts leave with the lowest converged value holds (mean and the worst
  instance), and the model-steps the schedule spends. The replay leaves out the references'
  margin rule: it measures the cuts alone.

This is the measurement behind the default search's cuts (docs/structure-search.md):
only validation rows are read.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from flowsweep.app.plan import plan_job
from flowsweep.config.compose import compose_config
from flowsweep.model import CouplingFlows
from flowsweep.search import Proposal
from flowsweep.search.job import build_optimizers, job_dependence
from flowsweep.seeding import torch_generator
from flowsweep.structure import parity_structure
from flowsweep.training import Recipe, train

__all__ = ["DATASETS", "STEPS", "field_table", "replay_cuts"]

#: The benchmarks of ``bench structure`` where the dependence start is wrong, one where it is
#: right, and two UCI tables.
DATASETS = ("synthetic_scale", "synthetic_wave", "synthetic_tree", "synthetic_pairs", "yeast", "sonar")
#: Steps of ``train.*`` at which the ranking is compared with the converged one.
STEPS = (100, 250, 500, 1000, 1500, 2000)


def _instance_curves(dataset: str, depth: int, instances: int, extra: Sequence[str]) -> list[dict]:
    """Per instance: the best-so-far validation curves ``[evaluations, candidates]``, their steps and
    which candidate is the start."""
    cfg = compose_config(["layout=opt", f"dataset={dataset}", f"depth.layers={depth}", f"instances={instances}",
                          "progress=false", *extra])
    plan = plan_job(cfg)
    data = plan.data
    dependence = job_dependence(plan.cfg, data)
    optimizers = build_optimizers(plan.cfg, plan.spec.d, plan.spec.m, list(plan.seeds), dependence)
    recipe = Recipe.from_config(plan.cfg.train)
    out = []
    for seed, optimizer in zip(plan.seeds, optimizers):
        structures = [p.structure if isinstance(p, Proposal) else p for p in optimizer.initial()]
        # Every candidate from the instance's seed, as the search's final rung trains them.
        generators = [torch_generator(seed) for _ in structures]
        flow = CouplingFlows(plan.spec, structures, generators)
        result = train(flow, data.train, int(plan.cfg.dataset.batch_size), recipe, generators, data.log_det,
                       valid=data.valid)
        values = result.val_curve.numpy()
        values = np.minimum.accumulate(np.where(np.isfinite(values), values, np.inf), axis=0)
        start = dependence.structure(optimizer.m, optimizer.depth, optimizer.seed)
        parity = parity_structure(optimizer.d, optimizer.m, optimizer.depth)
        out.append({"best": values, "steps": np.array(result.val_steps), "start": structures.index(start),
                    "parity": structures.index(parity), "trained": result.steps.numpy()})
    return out


def replay_cuts(curve: dict, cuts: Sequence[Sequence[int]]) -> tuple[float, int]:
    """One instance's field under the cut schedule ``cuts`` (``[[step, k], ...]``, as
    ``search.cuts``): at the first evaluation at or after each step only the best ``k`` by
    validation bpd so far go on (the start always among them, in the place of the last); of
    those left, the lowest converged value wins. Returns its share of the field's best
    converged gain over parity, and the model-steps spent (a model costs the steps it trained
    before its cut or its own early stop)."""
    best, steps, start = curve["best"], curve["steps"], curve["start"]
    alive = np.ones(best.shape[1], dtype=bool)
    spent = curve["trained"].astype(np.int64).copy()
    for step, k in cuts:
        at = min(int(np.searchsorted(steps, step)), len(steps) - 1)
        standing = [j for j in np.argsort(best[at], kind="stable") if alive[j]]
        survivors = standing[: int(k)]
        if start not in survivors and survivors:
            survivors[-1] = start
        for j in set(standing) - set(survivors):
            alive[j] = False
            spent[j] = min(spent[j], int(steps[at]))
    end = best[-1]
    chosen = min(np.flatnonzero(alive), key=lambda j: end[j])
    gain = end[curve["parity"]] - end.min()
    share = (end[curve["parity"]] - end[chosen]) / gain if gain > 0 else 1.0
    return float(share), int(spent.sum())


def field_table(datasets: Sequence[str] = DATASETS, depth: int = 4, instances: int = 8,
                extra: Sequence[str] = (), schedules: Sequence[Sequence[Sequence[int]]] = ()) -> pd.DataFrame:
    """One row per dataset (see the module docstring); ``schedules``: cut schedules to replay
    (default: the default search's ``search.cuts``)."""
    if not schedules:
        schedules = [[list(c) for c in compose_config(["layout=opt", *extra]).search.cuts]]
    rows = []
    for dataset in datasets:
        curves = _instance_curves(dataset, depth, instances, extra)
        row: dict[str, object] = {"dataset": dataset, "field": curves[0]["best"].shape[1]}
        for s in STEPS:
            rhos = []
            for c in curves:
                at = c["best"][min(int(np.searchsorted(c["steps"], s)), len(c["steps"]) - 1)]
                end = c["best"][-1]
                finite = np.isfinite(at) & np.isfinite(end)
                if finite.sum() > 2 and np.ptp(at[finite]) > 0:
                    rhos.append(float(pd.Series(at[finite]).corr(pd.Series(end[finite]), method="spearman")))
            row[f"rho @{s}"] = f"{np.mean(rhos):+.2f} ± {np.std(rhos, ddof=1) / np.sqrt(len(rhos)):.2f}" \
                if len(rhos) > 1 else "—"
        start = np.array([c["best"][-1][c["start"]] for c in curves])
        best = np.array([np.min(c["best"][-1]) for c in curves])
        row["start val bpd"] = f"{start.mean():.3f}"
        row["best of field"] = f"{best.mean():.3f}"
        beating = [(c["best"][-1] < c["best"][-1][c["start"]]).sum() for c in curves]
        row["structures beating the start"] = f"{np.mean(beating):.1f}"
        for cuts in schedules:
            name = " ".join(f"{s}:{k}" for s, k in cuts)
            replayed = np.array([replay_cuts(c, cuts) for c in curves])
            row[f"cuts {name}: share (worst)"] = f"{replayed[:, 0].mean():.1%} ({replayed[:, 0].min():.1%})"
            row[f"cuts {name}: model-steps"] = f"{replayed[:, 1].mean():,.0f}"
        rows.append(row)
        print(pd.DataFrame([row]).to_markdown(index=False), flush=True)
    return pd.DataFrame(rows)
