"""One job: a dataset × layout × depth (× search), ``instances`` models trained as one batch.

Order matters for failure handling: every check that can reject the input (types,
values, data files, tracking store, experiment, a layout's file) runs before the first
MLflow run exists, so bad input leaves nothing behind. The job's runs (a parent run and
one nested run per instance, :mod:`flowsweep.record.runinfo`) start with the job and end with
it: FINISHED, FAILED after a crash or when every instance diverged, KILLED after Ctrl-C.
The job then reports its outcome in a few lines (:mod:`flowsweep.record.summary`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from typing import Callable, Optional, Union

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from flowsweep.record import runinfo
from flowsweep.record import summary
from flowsweep.app.callbacks import LAUNCHER_PID_ENV
from flowsweep.app.plan import JobPlan, plan_job
from flowsweep.config import DivergedError
from flowsweep.app.interrupt import interrupted
from flowsweep.data import Dataset
from flowsweep.density.figure import log_samples_figure
from flowsweep.density.log import log_models, model_source, model_uri, register
from flowsweep.record.mlflow_writer import MlflowWriteError, settle
from flowsweep.model import CouplingFlows, ModelSpec
from flowsweep.record.results import LiveCurve, log_instances, log_job, log_search_metrics
from flowsweep.record.resume import objective_of, resume_job
from flowsweep.record.run_group import FAILED, JOB, KILLED, PHASE_TAG, RunGroup, RunSpec
from flowsweep.layouts import LayoutJob
from flowsweep.search.job import JobSearch, job_dependence, search_job
from flowsweep.seeding import torch_generator
from flowsweep.structure import Structure
from flowsweep.record.names import FINGERPRINT_TAG, SWEEP_ID_ENV, SWEEP_ID_TAG, objective as job_objective
from flowsweep.record.inputs import CONTEXT, CONTEXT_TAG, dataset_input
from flowsweep.record.tracking import open_store
from flowsweep.record.view import write_view
from flowsweep.training import Recipe, TrainResult, evaluate_bpd, mean_bpd, row_bpd, train

__all__ = ["run_job", "objective", "fingerprint"]

def _sweep_id(cfg: DictConfig) -> str:
    if cfg.tracking.sweep_id:
        return str(cfg.tracking.sweep_id)
    if os.environ.get(SWEEP_ID_ENV):
        return os.environ[SWEEP_ID_ENV]
    if HydraConfig.initialized():
        hc = HydraConfig.get()
        return str(hc.sweep.dir if hc.mode.name == "MULTIRUN" else hc.run.dir)
    return "interactive"


def fingerprint(cfg: DictConfig, given: Optional[Structure] = None) -> str:
    """Hash of everything that determines a job's numbers (not where they are logged);
    ``given`` is a structure read from outside the config (layout=file)."""
    content = OmegaConf.to_container(cfg, resolve=True)
    for volatile in ("tracking", "progress", "data_dir", "rerun"):
        content.pop(volatile, None)
    if given is not None:
        content["given_structure"] = given.to_dict()
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_job(job: Union[DictConfig, JobPlan], data: Optional[Dataset] = None) -> float:
    """Validate, train (searching first for ``layout=opt``), log; returns the job's objective.

    The objective is the mean validation bpd over the instances that did not diverge (the
    mean train bpd where ``dataset.validation_fraction=0`` leaves no validation split):
    never a test number, so a sweeper that minimises it does not tune on the test rows.
    A job whose every instance diverged raises :class:`~flowsweep.config.DivergedError`.

    ``job`` is the job's plan (:func:`~flowsweep.app.plan.plan_job`), or its config, planned here;
    ``data`` is then the dataset of ``cfg.dataset`` when the caller has loaded it already.
    """
    started, clock = time.time(), time.perf_counter()
    plan = job if isinstance(job, JobPlan) else plan_job(job, data)
    cfg, layout, uri, data, spec, seeds, m = (plan.cfg, plan.layout, plan.tracking_uri, plan.data, plan.spec,
                                              plan.seeds, plan.m)
    dependence = job_dependence(cfg, data) if layout.uses_dependence(cfg, data.d, m) else None
    # Fixed structures before any run exists: a bad layout.path leaves nothing behind.
    fixed = layout.structures(LayoutJob(cfg, data, m, seeds, uri, dependence))
    # A file's content, not only its path, decides the numbers.
    key = fingerprint(cfg, fixed[0] if layout.given and fixed else None)

    client, experiment_id = open_store(uri, cfg.tracking.experiment)
    write_view(client, experiment_id)  # what the job's look line opens
    job_name, names = runinfo.run_names(cfg, key)
    where = dict(uri=uri, run_name=job_name, sweep_id=_sweep_id(cfg), experiment_id=str(experiment_id))
    # In a sweep whose jobs run in this process (Hydra's basic launcher), a job does not
    # wait for its MLflow writes: they overlap the next job, and main.py waits for all of
    # them at the end. An earlier job of this very config must be written before resume looks.
    pipelined = os.environ.get(LAUNCHER_PID_ENV) == str(os.getpid())
    if pipelined and (errors := settle(job_name)):
        raise MlflowWriteError(f"an earlier job of this config could not be written: {errors[0]}")
    finished = resume_job(client, experiment_id, key, cfg.instances, cfg.rerun)
    if finished is not None:  # this config's runs already FINISHED (a resumed sweep)
        summary.report(summary.of_runs(cfg, [r.data.metrics for r in finished], objective_of(finished), **where))
        return objective_of(finished)
    params = runinfo.job_params(cfg)
    runs = RunGroup(
        client, experiment_id, job=RunSpec(job_name, params),
        instances=[RunSpec(n, runinfo.instance_params(params, i), runinfo.instance_tags(s))
                   for i, (n, s) in enumerate(zip(names, seeds))],
        tags={SWEEP_ID_TAG: _sweep_id(cfg), FINGERPRINT_TAG: key, **runinfo.source_tags(),
              **runinfo.sweep_tags(job_name, str(cfg.tracking.experiment))}, start_time=started,
    )
    runs.inputs(dataset_input(cfg.dataset, data.columns, {"train": len(data.train), "val": len(data.valid),
                                                          "test": len(data.test)}), {CONTEXT_TAG: CONTEXT})
    try:
        search, start = None, None
        if fixed is None:  # the layout searches
            runs.tag(JOB, PHASE_TAG, "structure search")
            search = search_job(cfg, spec, data, seeds, dependence)
            structures = search.structures
            start = search.outcome.champions if search.evaluation.final_start == "best" else None
            log_search_metrics(runs, search)
        else:
            structures = fixed
        runs.tag(JOB, PHASE_TAG, "training")
        runs.send(JOB)
        live = LiveCurve(runs, data.d, data.log_det, cfg.tracking.progress_interval_s,
                         stride=math.ceil(cfg.train.steps / cfg.tracking.curve_points))
        if search is not None and search.trained_final:  # the search's last rung was the final training
            result = _searched_final(cfg, spec, data, search)
        else:
            result = _train_final(cfg, spec, data, structures, seeds, start, on_progress=live)
        result["wall_time_s"] = time.perf_counter() - clock
        live.finish(result["curve"])
        title = runinfo.job_title(cfg)
        log_instances(runs, structures, result, data, title, search, dependence)
        began = time.perf_counter()
        best_model = log_models(runs, result, data, model_source(cfg, key)) if cfg.tracking.log_models else None
        runs.metric(JOB, "model_log_time_s", time.perf_counter() - began)  # its share of wall_time_s: the cost
        log_samples_figure(runs, result, data, title, seeds)
        job = summary.of_result(cfg, result, objective(result), **where)
        runs.tag(JOB, PHASE_TAG, "done")
        log_job(runs, job, result, title, search, structures, data.columns, runinfo.optimizer_label(cfg))
        if job.all_diverged:
            raise DivergedError.of(cfg.instances, cfg.train.max_lr, cfg.depth.layers)
    except (KeyboardInterrupt, SystemExit):
        # SystemExit mid-job: the process is told to stop from outside, e.g. submitit's
        # handler of a preemption or time limit, which requeues the task and exits.
        runs.close(KILLED)
        raise
    except BaseException as error:
        runs.close(KILLED if interrupted() else FAILED)  # an interrupt a library turned into its own error
        if isinstance(error, DivergedError):
            summary.report(job)
        raise
    runs.close(wait=not pipelined or bool(cfg.tracking.register))  # a model is registered once written
    if cfg.tracking.register and best_model is not None:
        register(uri, model_uri(runs.run_ids[best_model]), str(cfg.tracking.register))
    job.wall_time_s = time.perf_counter() - clock  # the whole job, its logging included
    summary.report(job)
    return objective(result)


def objective(result: dict) -> float:
    """The job's objective (:func:`flowsweep.record.names.objective`) of a result's per-instance bpd."""
    bpd = {split: result[f"{split}_bpd"] for split in ("train", "val") if f"{split}_bpd" in result}
    return job_objective(bpd, result["diverged"])


def _train_final(cfg: DictConfig, spec: ModelSpec, data: Dataset, structures: list[Structure], seeds: list[int],
                 start: Optional[list[Optional[CouplingFlows]]] = None,
                 on_progress: Optional[Callable[[int, torch.Tensor], None]] = None) -> dict:
    """Train the instances' structures with ``train.*``; from ``start``'s parameters where given."""
    generators = [torch_generator(s) for s in seeds]
    flow = CouplingFlows(spec, structures, generators)
    for i, champion in enumerate(start or []):
        if champion is not None:
            flow.copy_model(i, champion, 0)
    began, recipe = time.perf_counter(), Recipe.from_config(cfg.train)
    trained = train(flow, data.train, cfg.dataset.batch_size, recipe, generators, data.log_det,
                    valid=data.valid, on_progress=on_progress)
    return _final_result(flow, data, trained, time.perf_counter() - began, recipe)


def _searched_final(cfg: DictConfig, spec: ModelSpec, data: Dataset, search: JobSearch) -> dict:
    """The final models the search trained (its last rung), reported as :func:`_train_final` reports its own."""
    finals = [final for final in search.outcome.finals if final is not None]
    flow = CouplingFlows(spec, [final.structure for final in finals], [torch.Generator() for _ in finals])
    with torch.no_grad():
        flow.theta.copy_(torch.stack([final.theta for final in finals]))
    trained = TrainResult(torch.stack([final.curve for final in finals], 1),
                          torch.tensor([final.diverged for final in finals]),
                          torch.stack([final.val_curve for final in finals], 1), finals[0].val_steps,
                          torch.tensor([final.steps for final in finals]))
    return _final_result(flow, data, trained, max(final.seconds for final in finals), Recipe.from_config(cfg.train))


def _final_result(flow: CouplingFlows, data: Dataset, trained: TrainResult, train_time: float, recipe: Recipe) -> dict:
    """The splits' bpd of the trained ``flow`` (scored by ``recipe``'s kernel and threads) and its
    training's curves, flags and model-steps."""
    # The training rows' bpd row by row: their mean is train_bpd, their quantiles go with the
    # saved models (the outlier flag), so the largest split is scored once.
    train_rows = row_bpd(flow, data.train, data.log_det, threads=recipe.threads, kernel=recipe.kernel)
    result = {"train_bpd": mean_bpd(train_rows).numpy()}
    splits = {"val": data.valid, "test": data.test}
    result |= {f"{name}_bpd": evaluate_bpd(flow, rows, data.log_det, threads=recipe.threads, kernel=recipe.kernel).numpy()
               for name, rows in splits.items() if len(rows)}
    diverged = trained.diverged.numpy() | ~flow.finite_models().numpy()
    for values in result.values():
        diverged = diverged | ~np.isfinite(values)
    return {**result, "curve": trained.curve.numpy(), "val_curve": trained.val_curve.numpy(),
            "val_steps": trained.val_steps, "diverged": diverged, "num_params": flow.num_parameters(),
            "train_time_s": train_time, "model_steps": trained.steps.numpy(),
            "flow": flow, "train_row_bpd": train_rows.numpy()}
