"""One job: a dataset × layout × depth (× search), ``instances`` models trained as one batch.

Order matters for failure handling: every check that can reject the input (types,
values, data files, tracking store, experiment) runs before the first MLflow run exists,
so bad input leaves nothing behind. The job's runs (a parent run and one nested run per
instance, :mod:`flowsweep.runinfo`) start with the job and end with it: FINISHED, FAILED
after a crash or when every instance diverged, KILLED after Ctrl-C. The job then reports
its outcome in a few lines (:mod:`flowsweep.summary`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from typing import Callable, Optional

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from flowsweep import runinfo, summary
from flowsweep.config import ConfigError, DivergedError, validate, validate_against_data
from flowsweep.data import Dataset, load_dataset, standardized
from flowsweep.callbacks import LAUNCHER_PID_ENV
from flowsweep.engine import BatchedCouplingFlow
from flowsweep.mlflow_writer import MlflowWriteError, settle
from flowsweep.results import LiveCurve, log_instances, log_job, log_search_metrics
from flowsweep.resume import objective_of, resume_job
from flowsweep.run_group import FAILED, JOB, KILLED, PHASE_TAG, RunGroup, RunSpec
from flowsweep.search import StructureOptimizer
from flowsweep.search.runner import SearchSettings, run_searches
from flowsweep.seeding import derive_seed, torch_generator
from flowsweep.structure import Structure, parity_structure, random_structure
from flowsweep.tracking import SWEEP_ID_ENV, check_reachable, open_store, resolve_tracking_uri
from flowsweep.training import Schedule, evaluate_bpd, train

__all__ = ["run_job", "build_optimizers", "fingerprint"]

#: Stream keys under an instance's seed (fixed so results never depend on code order).
_RANDOM_LAYOUT_KEY, _SEARCH_KEY = 1, 2


def _launch_dir() -> str:
    return HydraConfig.get().runtime.cwd if HydraConfig.initialized() else os.getcwd()


def _sweep_id(cfg: DictConfig) -> str:
    if cfg.tracking.sweep_id:
        return str(cfg.tracking.sweep_id)
    if os.environ.get(SWEEP_ID_ENV):
        return os.environ[SWEEP_ID_ENV]
    if HydraConfig.initialized():
        hc = HydraConfig.get()
        return str(hc.sweep.dir if hc.mode.name == "MULTIRUN" else hc.run.dir)
    return "interactive"


def fingerprint(cfg: DictConfig) -> str:
    """Hash of everything that determines a job's numbers (not where they are logged)."""
    content = OmegaConf.to_container(cfg, resolve=True)
    for volatile in ("tracking", "progress", "data_dir", "rerun"):
        content.pop(volatile, None)
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:16]


def build_optimizers(cfg: DictConfig, d: int, m: int, seeds: list[int]) -> list[StructureOptimizer]:
    """One optimizer per instance from the ``search`` group (``_target_`` + its keys)."""
    try:
        return [instantiate(cfg.search, d=d, m=m, depth=cfg.depth.layers, seed=derive_seed(s, _SEARCH_KEY))
                for s in seeds]
    except ConfigError:
        raise
    except Exception as error:  # instantiate wraps unknown keys and bad targets
        cause = error.__cause__ or error
        if isinstance(cause, ConfigError):
            raise cause from None
        raise ConfigError("search", f"cannot build the optimizer: {cause}") from None


def _fixed_structures(cfg: DictConfig, d: int, m: int, seeds: list[int]) -> list[Structure]:
    if cfg.layout.name == "parity":
        return [parity_structure(d, m, cfg.depth.layers)] * len(seeds)
    return [random_structure(d, m, cfg.depth.layers, np.random.default_rng(derive_seed(s, _RANDOM_LAYOUT_KEY)))
            for s in seeds]


def run_job(cfg: DictConfig, data: Optional[Dataset] = None) -> float:
    """Validate, train (searching first for ``layout=opt``), log; returns the job's objective.

    The objective is the mean validation bpd over the instances that did not diverge (the
    mean train bpd where ``dataset.validation_fraction=0`` leaves no validation split):
    never a test number, so a sweeper that minimises it does not tune on the test rows.
    A job whose every instance diverged raises :class:`~flowsweep.config.DivergedError`.

    ``data`` is the dataset of ``cfg.dataset`` when the caller has loaded it already.
    """
    started, clock = time.time(), time.perf_counter()
    validate(cfg)
    uri = resolve_tracking_uri(cfg.tracking.uri, _launch_dir())
    check_reachable(uri)
    if data is None:
        data = load_dataset(cfg.dataset, cfg.data_dir)
    if cfg.model.preprocess == "standardize":
        # A fixed standardizing map ahead of the first layer: the same model family (its
        # constant transform absorbs it), but SGD no longer fights raw scales such as
        # turbine's ~1000 hPa. Its log-determinant keeps every bpd in raw units.
        data = standardized(data)
    m = validate_against_data(cfg, data.d, data.train.shape[0])
    seeds = [derive_seed(cfg.seed, i) for i in range(cfg.instances)]
    optimizers = build_optimizers(cfg, data.d, m, seeds) if cfg.layout.name == "opt" else None

    client, experiment_id = open_store(uri, cfg.tracking.experiment)
    job_name, names = runinfo.run_names(cfg, fingerprint(cfg))
    where = dict(uri=uri, run_name=job_name, sweep_id=_sweep_id(cfg))
    # In a sweep whose jobs run in this process (Hydra's basic launcher), a job does not
    # wait for its MLflow writes: they overlap the next job, and main.py waits for all of
    # them at the end. An earlier job of this very config must be written before resume looks.
    pipelined = os.environ.get(LAUNCHER_PID_ENV) == str(os.getpid())
    if pipelined and (errors := settle(job_name)):
        raise MlflowWriteError(f"an earlier job of this config could not be written: {errors[0]}")
    finished = resume_job(client, experiment_id, fingerprint(cfg), cfg.instances, cfg.rerun)
    if finished is not None:  # this config's runs already FINISHED (a resumed sweep)
        summary.report(summary.of_runs(cfg, [r.data.metrics for r in finished], objective_of(finished), **where))
        return objective_of(finished)
    params = runinfo.job_params(cfg)
    runs = RunGroup(
        client, experiment_id, job=RunSpec(job_name, params),
        instances=[RunSpec(n, runinfo.instance_params(params, i, s)) for i, (n, s) in enumerate(zip(names, seeds))],
        tags={"sweep_id": _sweep_id(cfg), "fingerprint": fingerprint(cfg)}, start_time=started,
    )
    try:
        if optimizers:
            runs.tag(JOB, PHASE_TAG, "structure search")
            settings = SearchSettings(cfg.dataset.batch_size, cfg.train, cfg.progress)
            search_time = run_searches(optimizers, data, settings)
            structures = [(o.best or o.history[0]).structure for o in optimizers]
            log_search_metrics(runs, optimizers, search_time)
        else:
            structures = _fixed_structures(cfg, data.d, m, seeds)
        runs.tag(JOB, PHASE_TAG, "training")
        runs.send(JOB)
        live = LiveCurve(runs, data.d, data.log_det, cfg.tracking.progress_interval_s,
                         stride=math.ceil(cfg.train.steps / cfg.tracking.curve_points))
        result = _train_final(cfg, data, structures, seeds, on_progress=live)
        result["wall_time_s"] = time.perf_counter() - clock
        live.finish(result["curve"])
        title = runinfo.job_title(cfg)
        log_instances(runs, structures, result, data.columns, title, optimizers)
        job = summary.of_result(cfg, result, objective(result), **where)
        runs.tag(JOB, PHASE_TAG, "done")
        log_job(runs, job, result, title, optimizers)
        if job.all_diverged:
            raise DivergedError.of(cfg.instances, cfg.train.max_lr, cfg.depth.layers)
    except KeyboardInterrupt:
        runs.close(KILLED)
        raise
    except BaseException as error:
        runs.close(FAILED)
        if isinstance(error, DivergedError):
            summary.report(job)
        raise
    runs.close(wait=not pipelined)
    job.wall_time_s = time.perf_counter() - clock  # the whole job, its logging included
    summary.report(job)
    return objective(result)


def objective(result: dict) -> float:
    """Mean ``val_bpd`` (else ``train_bpd``) of the converged instances; ``inf`` if none converged."""
    values = result["val_bpd" if "val_bpd" in result else "train_bpd"][~result["diverged"]]
    return float(values.mean()) if len(values) else math.inf


def _train_final(cfg: DictConfig, data: Dataset, structures: list[Structure], seeds: list[int],
                 on_progress: Optional[Callable[[int, torch.Tensor], None]] = None) -> dict:
    generators = [torch_generator(s) for s in seeds]
    flow = BatchedCouplingFlow(structures, generators)
    began = time.perf_counter()
    trained = train(flow, data.train, cfg.dataset.batch_size, Schedule.from_config(cfg.train), generators, data.log_det,
                    on_progress=on_progress)
    train_time = time.perf_counter() - began
    splits = {"train": data.train, "val": data.valid, "test": data.test}
    result = {f"{name}_bpd": evaluate_bpd(flow, rows, data.log_det).numpy() for name, rows in splits.items() if len(rows)}
    diverged = trained.diverged.numpy()
    for values in result.values():
        diverged = diverged | ~np.isfinite(values)
    return {**result, "curve": trained.curve.numpy(), "diverged": diverged, "num_params": flow.num_parameters(),
            "train_time_s": train_time}
