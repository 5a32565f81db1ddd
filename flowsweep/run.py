"""One job: a dataset × layout × depth (× search), ``instances`` models trained as one batch.

Order matters for failure handling: every check that can reject the input (types,
values, data files, tracking store) runs before the first MLflow run exists, so bad
input leaves nothing behind; once runs exist, a crash ends them FAILED.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from flowsweep import layouts, plots
from flowsweep.config import ConfigError, validate, validate_against_data
from flowsweep.data import Dataset, load_dataset, preprocessed
from flowsweep.graph import Graph, dependency_recall
from flowsweep.model import CouplingFlows, ModelSpec
from flowsweep.resume import resume_job
from flowsweep.dependence import Dependence
from flowsweep.search.job import JobSearch, check_search, job_dependence, search_job
from flowsweep.seeding import derive_seed, torch_generator
from flowsweep.structure import Structure, parity_structure, random_structure
from flowsweep.tracking import (SWEEP_ID_ENV, RunGroup, check_reachable, ensure_experiment, flatten, open_client,
                                resolve_tracking_uri)
from flowsweep.training import Recipe, evaluate_bpd, train

__all__ = ["run_job", "objective", "fingerprint"]

#: Stream key under an instance's seed (fixed so results never depend on code order; the
#: search's are in flowsweep.search.job).
_RANDOM_LAYOUT_KEY = 1


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


def fingerprint(cfg: DictConfig, given: Optional[Structure] = None) -> str:
    """Hash of everything that determines a job's numbers (not where they are logged);
    ``given`` is a structure read from outside the config (layout=file)."""
    content = OmegaConf.to_container(cfg, resolve=True)
    for volatile in ("tracking", "progress", "data_dir", "rerun"):
        content.pop(volatile, None)
    if given is not None:
        content["given_structure"] = given.to_dict()
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _fixed_structures(cfg: DictConfig, data: Dataset, m: int, seeds: list[int], uri: str,
                      dependence: Optional[Dependence]) -> list[Structure]:
    d, depth = data.d, cfg.depth.layers
    if cfg.layout.name == "parity":
        return [parity_structure(d, m, depth)] * len(seeds)
    if cfg.layout.name == "oracle":
        return [layouts.oracle(data.graph, data.name, d, m, depth)] * len(seeds)
    if cfg.layout.name == "file":
        given = (layouts.structure_from_file(cfg.layout.path, d, m, depth) if cfg.layout.path
                 else layouts.structure_from_run(cfg.layout.run_id, uri, d, m, depth))
        return [given] * len(seeds)
    if cfg.layout.name == "dependence":
        return [dependence.structure(m, depth, seed=derive_seed(s, _RANDOM_LAYOUT_KEY) % 2**32) for s in seeds]
    return [random_structure(d, m, depth, np.random.default_rng(derive_seed(s, _RANDOM_LAYOUT_KEY)))
            for s in seeds]


def run_job(cfg: DictConfig, data: Optional[Dataset] = None) -> float:
    """Validate, train (searching first for ``layout=opt``), log; returns the job's objective.

    The objective is the mean validation bpd over the instances that did not diverge (the
    mean train bpd where ``dataset.validation_fraction=0`` leaves no validation split):
    never a test number, so a sweeper that minimises it does not tune on the test rows.

    ``data`` is the dataset of ``cfg.dataset`` when the caller has loaded it already.
    """
    started = time.perf_counter()
    validate(cfg)
    uri = resolve_tracking_uri(cfg.tracking.uri, _launch_dir())
    check_reachable(uri)
    if data is None:
        data = load_dataset(cfg.dataset, cfg.data_dir)
    # A fixed map ahead of the first layer: standardizing is the same model family (its
    # constant transform absorbs it), but SGD no longer fights raw scales such as turbine's
    # ~1000 hPa; whitening starts the flow from a full-covariance Gaussian. The map's
    # log-determinant keeps every bpd in raw units.
    data = preprocessed(data, cfg.model.preprocess)
    m = validate_against_data(cfg, data.d, data.train.shape[0])
    spec = ModelSpec.from_config(cfg.model, data.d, m, cfg.depth.layers)
    seeds = [derive_seed(cfg.seed, i) for i in range(cfg.instances)]
    searching = cfg.layout.name == "opt"
    wants_dependence = check_search(cfg, data.d, m) if searching else cfg.layout.name == "dependence"
    dependence = job_dependence(cfg, data) if wants_dependence else None
    # Fixed structures before any run exists: a bad layout.path leaves nothing behind.
    fixed = None if searching else _fixed_structures(cfg, data, m, seeds, uri, dependence)
    # A file's content, not only its path, decides the numbers.
    key = fingerprint(cfg, fixed[0] if cfg.layout.name == "file" else None)

    client = open_client(uri)
    experiment_id = ensure_experiment(client, uri, cfg.tracking.experiment)
    finished = resume_job(client, experiment_id, key, cfg.instances, cfg.rerun)
    if finished is not None:  # this config's runs already FINISHED (a resumed sweep)
        return finished
    search_name = str(cfg.search.name) if searching else "none"
    common = flatten(OmegaConf.to_container(cfg, resolve=True))
    common.update(dataset=cfg.dataset.name, layout=cfg.layout.name, depth=str(cfg.depth.layers), search=search_name)
    label = f"{cfg.dataset.name}-{cfg.layout.name}-L{cfg.depth.layers}"
    runs = RunGroup(
        client, experiment_id,
        names=[f"{label}-i{i:02d}" for i in range(cfg.instances)],
        params=[{**common, "instance": str(i), "instance_seed": str(s)} for i, s in enumerate(seeds)],
        tags={"sweep_id": _sweep_id(cfg), "fingerprint": key},
    )
    try:
        search = search_job(cfg, spec, data, seeds, dependence) if searching else None
        if search is not None:
            structures = search.structures
            start = search.outcome.champions if search.evaluation.final_start == "best" else None
        else:
            structures, start = fixed, None
        result = _train_final(cfg, spec, data, structures, seeds, start)
        result["wall_time_s"] = time.perf_counter() - started
        _log(runs, cfg, structures, result, search, dependence, data.graph)
    except BaseException:
        runs.close(failed=True)
        raise
    runs.close()
    return objective(result)


def objective(result: dict) -> float:
    """Mean ``val_bpd`` (else ``train_bpd``) of the converged instances; ``inf`` if none converged."""
    values = result["val_bpd" if "val_bpd" in result else "train_bpd"][~result["diverged"]]
    return float(values.mean()) if len(values) else math.inf


def _train_final(cfg: DictConfig, spec: ModelSpec, data: Dataset, structures: list[Structure], seeds: list[int],
                 start: Optional[list[Optional[CouplingFlows]]] = None) -> dict:
    """Train the instances' structures with ``train.*``; from ``start``'s parameters where given."""
    generators = [torch_generator(s) for s in seeds]
    flow = CouplingFlows(spec, structures, generators)
    for i, champion in enumerate(start or []):
        if champion is not None:
            flow.copy_model(i, champion, 0)
    began = time.perf_counter()
    trained = train(flow, data.train, cfg.dataset.batch_size, Recipe.from_config(cfg.train), generators, data.log_det,
                    valid=data.valid)
    train_time = time.perf_counter() - began
    splits = {"train": data.train, "val": data.valid, "test": data.test}
    result = {f"{name}_bpd": evaluate_bpd(flow, rows, data.log_det).numpy() for name, rows in splits.items() if len(rows)}
    diverged = trained.diverged.numpy()
    for values in result.values():
        diverged = diverged | ~np.isfinite(values)
    return {**result, "curve": trained.curve.numpy(), "diverged": diverged, "num_params": flow.num_parameters(),
            "train_time_s": train_time}


def _log(runs: RunGroup, cfg: DictConfig, structures: list[Structure], result: dict, search: Optional[JobSearch],
         dependence: Optional[Dependence], graph: Optional[Graph] = None) -> None:
    for i, structure in enumerate(structures):
        diverged = bool(result["diverged"][i])
        runs.curve(i, "batch_bpd", result["curve"][:, i], first_step=1)
        for key in ("train_bpd", "val_bpd", "test_bpd"):
            if key in result:
                runs.metric(i, key, math.inf if diverged else result[key][i])
        runs.metric(i, "diverged", float(diverged))
        runs.metric(i, "num_params", result["num_params"])
        runs.metric(i, "wall_time_s", result["wall_time_s"])
        runs.metric(i, "train_time_s", result["train_time_s"])
        runs.metric(i, "pair_coverage", structure.pair_coverage())
        if graph:
            runs.metric(i, "dependency_recall", dependency_recall(structure, graph))
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            (folder / "masks.json").write_text(json.dumps(structure.to_dict(), indent=1))
            plots.save_mask_heatmap(structure, folder / "masks.png")
            plots.save_bpd_curve(result["curve"][:, i], folder / "bpd_curve.png", title=f"instance {i}")
            if dependence is not None:  # what the data-driven layout or search started from
                (folder / "dependence.json").write_text(json.dumps(np.round(dependence.weight, 5).tolist()))
            if search is not None:
                _log_search(runs, i, search, folder)
            runs.artifacts(i, tmp)


def _log_search(runs: RunGroup, i: int, search: JobSearch, folder: Path) -> None:
    """Search metrics at step = iteration t; every trial (diverged ones too) in ``search_trials.json``."""
    optimizer = search.optimizers[i]
    trials = optimizer.history
    finite = [t for t in trials if math.isfinite(t.value)]  # diverged trials: in the JSON, not the chart
    for trial in finite:
        runs.metric(i, "search_trial_bpd", trial.value, step=trial.iteration)
    accepted = {t.iteration for t in trials if t.accepted}
    for t, best in enumerate(optimizer.best_trace):
        runs.metric(i, "search_accepted", float(t in accepted), step=t)
        if math.isfinite(best):
            runs.metric(i, "search_best_bpd", best, step=t)
    runs.metric(i, "search_time_s", search.outcome.seconds)
    runs.metric(i, "search_model_steps", search.outcome.model_steps[i])
    runs.metric(i, "search_trials", len(trials))
    runs.metric(i, "search_diverged_trials", len(trials) - len(finite))
    (folder / "search_trials.json").write_text(json.dumps([t.to_dict() for t in trials]))
    plots.save_search_trajectory(
        np.array([t.iteration for t in trials]), np.array([t.value for t in trials]),
        np.array(optimizer.best_trace), folder / "search_trajectory.png", title=f"instance {i}",
    )
