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
  best of the field, and how many structures of the field beat the start.

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
from flowsweep.training import Recipe, train

__all__ = ["DATASETS", "STEPS", "field_table"]

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
        out.append({"best": values, "steps": np.array(result.val_steps), "start": structures.index(start)})
    return out


def field_table(datasets: Sequence[str] = DATASETS, depth: int = 4, instances: int = 8,
                extra: Sequence[str] = ()) -> pd.DataFrame:
    """One row per dataset (see the module docstring)."""
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
        rows.append(row)
        print(pd.DataFrame([row]).to_markdown(index=False), flush=True)
    return pd.DataFrame(rows)
