"""zuko's NSF and MAF trained on exactly flowsweep's splits: the density baseline to beat.

``python -m flowsweep.bench zuko --dataset magic`` loads and preprocesses the dataset as a
job does (``load_dataset`` then ``preprocessed``: dequantization where the dataset's config
asks for it, the validation rows cut from the training split, ``model.preprocess``), then
trains ``seeds`` models of each zuko flow with the job's stopping rule: minibatches of
``dataset.batch_size``, Adam with a cosine schedule from ``lr`` down to ``train.base_lr``
over ``train.steps``, validation bpd every ``train.eval_every`` steps, stop after
``train.patience`` evaluations without improvement, and keep the best evaluation's
parameters. Test bpd is in raw units (the preprocessing's log-determinant added), as
flowsweep's ``test_bpd``. zuko's flows are autoregressive (each feature conditioned on all
earlier ones, the order reversed between transforms): the tabular state of the art that a
coupling flow's structure search is measured against.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from typing import Optional

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from flowsweep.config.compose import compose_config
from flowsweep.data import Dataset, load_dataset, preprocessed
from flowsweep.seeding import derive_seed, torch_generator
from flowsweep.training import gather, minibatch_rows, nats_to_bpd

__all__ = ["FLOWS", "zuko_flow", "train_zuko", "zuko_table"]

#: The zuko flows this benchmark trains.
FLOWS = ("nsf", "maf")
#: Stream key of the baselines' seeds under the config's seed.
_ZUKO_KEY = 21


def zuko_flow(name: str, features: int, transforms: int, hidden: Sequence[int], bins: int = 8) -> torch.nn.Module:
    """zuko's ``NSF`` (rational-quadratic splines of ``bins`` bins on [-5, 5]) or ``MAF`` (affine)."""
    import zuko

    if name == "nsf":
        return zuko.flows.NSF(features, transforms=transforms, bins=bins, hidden_features=tuple(hidden))
    if name == "maf":
        return zuko.flows.MAF(features, transforms=transforms, hidden_features=tuple(hidden))
    raise ValueError(f"unknown zuko flow {name!r}; choose from {list(FLOWS)}")


def _bpd(model: torch.nn.Module, rows: Tensor, log_det: float, chunk: int = 8192) -> float:
    """Mean bpd of ``rows`` in raw units (nats of the model's space plus the preprocessing's)."""
    with torch.no_grad():
        nll = -torch.cat([model().log_prob(part) for part in rows.split(chunk)]).double().mean()
    return float(nats_to_bpd(nll, rows.shape[1], log_det))


def train_zuko(model: torch.nn.Module, data: Dataset, batch_size: int, steps: int, lr: float, min_lr: float,
               eval_every: int, patience: Optional[int], generator: torch.Generator) -> dict[str, float]:
    """Train ``model`` with the job's stopping rule (module docstring); returns its figures."""
    assert data.valid is not None and len(data.valid)  # the stopping rule needs validation rows
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps, eta_min=min_lr)
    best, best_step, since, best_state = _bpd(model, data.valid, data.log_det), 0, 0, copy.deepcopy(model.state_dict())
    start, step = time.perf_counter(), 0
    for step, rows in enumerate(minibatch_rows(data.train.shape[0], batch_size, steps, [generator]), start=1):
        loss = -model().log_prob(gather(data.train, rows)[0]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % eval_every == 0 or step == steps:
            value = _bpd(model, data.valid, data.log_det)
            if value < best:  # NaN never is: a diverged model keeps its best parameters
                best, best_step, since, best_state = value, step, 0, copy.deepcopy(model.state_dict())
            else:
                since += 1
            if patience is not None and since >= patience:
                break
    seconds = time.perf_counter() - start
    model.load_state_dict(best_state)
    return {"val_bpd": best, "test_bpd": _bpd(model, data.test, data.log_det), "best_step": best_step,
            "steps": step, "seconds": seconds}


def zuko_table(dataset: str, flows: Sequence[str] = FLOWS, seeds: int = 5, transforms: int = 4,
               hidden: Sequence[int] = (64, 64), lr: float = 1e-3, steps: Optional[int] = None,
               data_dir: Optional[str] = None, echo: bool = True) -> pd.DataFrame:
    """Per flow: ``seeds`` models trained (:func:`train_zuko`), test bpd mean ± standard error."""
    cfg = compose_config([f"dataset={dataset}"])
    data = preprocessed(load_dataset(cfg.dataset, data_dir or cfg.data_dir), cfg.model.preprocess)
    steps = int(cfg.train.steps) if steps is None else steps
    patience = None if cfg.train.patience is None else int(cfg.train.patience)
    rows = []
    for name in flows:
        runs = []
        for i in range(seeds):
            seed = derive_seed(int(cfg.seed), _ZUKO_KEY, i)
            torch.manual_seed(seed)  # zuko draws its initial parameters from torch's global generator
            model = zuko_flow(name, data.d, transforms, hidden)
            runs.append(train_zuko(model, data, int(cfg.dataset.batch_size), steps, lr, float(cfg.train.base_lr),
                                   int(cfg.train.eval_every), patience, torch_generator(seed)))
            if echo:
                print(f"  {dataset} {name} seed {i}: test {runs[-1]['test_bpd']:.3f}, val {runs[-1]['val_bpd']:.3f}, "
                      f"best step {runs[-1]['best_step']}, {runs[-1]['seconds']:.0f} s", flush=True)
        test = np.array([r["test_bpd"] for r in runs])
        rows.append({
            "dataset": dataset, "flow": f"zuko {name.upper()} ({transforms} transforms, "
                                        f"{'x'.join(map(str, hidden))})",
            "parameters": sum(p.numel() for p in model.parameters()), "n": seeds,
            "test bpd": f"{test.mean():.3f} ± {test.std(ddof=1) / math.sqrt(seeds) if seeds > 1 else math.nan:.3f}",
            "val bpd": round(float(np.mean([r["val_bpd"] for r in runs])), 3),
            "best step (mean)": round(float(np.mean([r["best_step"] for r in runs]))),
            "s / model": round(float(np.mean([r["seconds"] for r in runs])), 1),
        })
    return pd.DataFrame(rows)
