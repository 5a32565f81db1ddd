"""What a job's MLflow runs are called, which params and tags they carry.

Names are readable and unique within an experiment: ``<dataset>-<layout>-L<depth>[-<search>]``
followed by the first characters of the job's config fingerprint, e.g.
``yeast-opt-L2-random-3f9a1c`` for a job's parent run and ``yeast-opt-L2-i07-random-3f9a1c``
for its instance 7 (what tells runs apart comes first: the MLflow UI cuts long names short).
Jobs that share dataset, layout, search and depth but differ in any other setting (a
learning rate, a seed) differ in the fingerprint part; the same config has the same
names, so a resumed or re-run job is recognisable.

Params are the composed config, flattened (``train.max_lr``), one name per setting, as a
person reads them: ``dataset``, ``layout``, ``depth`` and ``search`` (``none`` without a
search; the keys the analysis groups by) stand for ``dataset.name``, ``layout.name``,
``depth.layers`` and ``search.name``, which are not repeated; left out are the keys under
``tracking.omit_params`` (where data and runs live, how the raw files are described),
``search.*`` for a layout that does not search, ``_target_`` (the class a name builds),
``null`` values (a setting left to its default rule, e.g. ``model.m``) and keys that do
nothing in the run (:data:`UNUSED_WHEN`: ``train.momentum`` without SGD, the cyclic
schedule's keys under another schedule, ``model.hidden`` without the mlp conditioner).
An instance run adds ``instance``; its seed is the tag ``seed`` in hex.

Tags name the code that made the numbers, with MLflow's own source tags: the script
(``mlflow.source.name``), the user, and ``mlflow.source.git.commit`` where flowsweep runs
from a git checkout (``flowsweep.git.dirty`` is ``true`` when that checkout had changes
not committed); the UI shows the source and its commit on a run's page.
"""

from __future__ import annotations

import functools
import getpass
import subprocess
import sys
from pathlib import Path, PurePath
from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf

from flowsweep.layouts import build_layout
from flowsweep.record.names import STUDY_TAG, SWEEPER_TAG, TRIAL_TAG

__all__ = ["UNUSED_WHEN", "dataset_label", "job_title", "optimizer_label", "run_names", "job_params", "instance_params",
           "instance_tags", "source_tags", "sweep_tags"]

#: Characters of the fingerprint in a run name: enough to tell apart the jobs of a sweep.
_FINGERPRINT_CHARS = 6


def _searches(cfg: DictConfig) -> bool:
    return build_layout(cfg.layout).searches


def dataset_label(cfg: DictConfig) -> str:
    """The dataset as runs, titles and the analysis name it: ``dataset.name``, and for
    ``dataset=csv`` the file's name (``my_table.csv``), so that jobs on two files are two datasets."""
    name = str(cfg.dataset.name)
    path = cfg.dataset.get("path") if name == "csv" else None
    return PurePath(str(path)).name if path else name


def job_title(cfg: DictConfig) -> str:
    """``yeast · opt (random) · depth 2``: the job as figure titles name it."""
    layout = f"{cfg.layout.name} ({cfg.search.name})" if _searches(cfg) else str(cfg.layout.name)
    return f"{dataset_label(cfg)} · {layout} · depth {cfg.depth.layers}"


#: How figures name each optimizer (train.optimizer) and learning-rate schedule (train.schedule).
_OPTIMIZERS = {"sgd": "SGD", "adam": "Adam"}
_SCHEDULES = {"cyclic": "cyclic rate", "cosine": "cosine rate", "constant": "constant rate"}


def optimizer_label(cfg: DictConfig) -> str:
    """``Adam, cosine rate``: what a training step is, as figure axes name it."""
    optimizer, schedule = str(cfg.train.optimizer), str(cfg.train.schedule)
    return f"{_OPTIMIZERS.get(optimizer, optimizer)}, {_SCHEDULES.get(schedule, schedule)}"


def run_names(cfg: DictConfig, fingerprint: str) -> tuple[str, list[str]]:
    """The parent run's name and the instance runs' names."""
    fp = fingerprint[:_FINGERPRINT_CHARS]
    head = f"{dataset_label(cfg)}-{cfg.layout.name}-L{cfg.depth.layers}"
    tail = f"-{cfg.search.name}-{fp}" if _searches(cfg) else f"-{fp}"
    return head + tail, [f"{head}-i{i:02d}{tail}" for i in range(cfg.instances)]


def _flatten(node: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"train": {"steps": 5}}`` → ``{"train.steps": "5"}``."""
    out: dict[str, str] = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = str(value)
    return out


def _omitted(name: str, prefixes: list[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


#: Keys that do nothing unless the setting on the left has one of the values on the right
#: (conf/config.yaml says so beside each: "sgd only", "cyclic only", "mlp only", "spline only").
UNUSED_WHEN: dict[str, tuple[str, tuple[str, ...]]] = {
    "train.momentum": ("train.optimizer", ("sgd",)),
    "train.step_size_up": ("train.schedule", ("cyclic",)),
    "train.mode": ("train.schedule", ("cyclic",)),
    "train.base_lr": ("train.schedule", ("cyclic", "cosine")),
    "model.hidden": ("model.conditioner", ("mlp",)),
    "model.activation": ("model.conditioner", ("mlp",)),
    "model.bins": ("model.coupling", ("spline",)),
    "model.tail_bound": ("model.coupling", ("spline",)),
}
#: Config keys shown under their short name (the first four params every run carries).
_SHORT = {"dataset.name": "dataset", "layout.name": "layout", "depth.layers": "depth", "search.name": "search"}


def job_params(cfg: DictConfig) -> dict[str, str]:
    """The params of a job's parent run (and of each instance run, with :func:`instance_params`)."""
    omit = [str(p) for p in cfg.tracking.omit_params]
    if not _searches(cfg):
        omit.append("search")
    flat = _flatten(OmegaConf.to_container(cfg, resolve=True))
    params = {"dataset": dataset_label(cfg), "layout": str(cfg.layout.name), "depth": str(cfg.depth.layers),
              "search": str(cfg.search.name) if _searches(cfg) else "none"}
    for key, value in flat.items():
        if key in _SHORT or _omitted(key, omit) or key.rsplit(".", 1)[-1] == "_target_" or value == "None":
            continue
        if key in UNUSED_WHEN and flat.get(UNUSED_WHEN[key][0]) not in UNUSED_WHEN[key][1]:
            continue
        params[key] = value
    return params


def instance_params(job: Mapping[str, str], instance: int) -> dict[str, str]:
    """An instance run's params: the job's and its index."""
    return {**job, "instance": str(instance)}


def instance_tags(seed: int) -> dict[str, str]:
    """An instance run's own tags: its seed (64 bits, derived from ``seed`` and the index) in hex."""
    return {"seed": f"{seed:x}"}


def sweep_tags(run_name: str, experiment: str) -> dict[str, str]:
    """What made this job (:data:`~flowsweep.record.names.SWEEPER_TAG`): a run, a grid, or an
    Optuna study's trial, with the study's name and the trial's number (whose user attributes
    get ``run_name`` and ``experiment``: :func:`flowsweep.record.study.link_trial`)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return {SWEEPER_TAG: "run"}
    hc = HydraConfig.get()
    target = str(OmegaConf.select(hc, "sweeper._target_", default=""))
    if "optuna" not in target.lower():
        return {SWEEPER_TAG: "grid" if target.endswith("BasicSweeper") else target.rsplit(".", 1)[-1]}
    from flowsweep.record.study import link_trial

    tags = {SWEEPER_TAG: "optuna", STUDY_TAG: str(OmegaConf.select(hc, "sweeper.study_name", default=""))}
    number = link_trial(hc.sweeper, list(hc.overrides.task), run_name, experiment)
    return tags if number is None else {**tags, TRIAL_TAG: str(number)}


@functools.lru_cache(maxsize=1)
def source_tags() -> dict[str, str]:
    """MLflow's source tags: the script that ran, the user, and the git commit of the
    checkout flowsweep runs from (none for an installed copy, or where git is missing).
    The UI shows the commit beside the source on a run's page."""
    tags = {"mlflow.source.type": "LOCAL"}
    if sys.argv and sys.argv[0]:
        tags["mlflow.source.name"] = str(Path(sys.argv[0]).resolve())
    try:
        tags["mlflow.user"] = getpass.getuser()
    except (OSError, KeyError):  # no login name in this container
        pass
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=10, check=True).stdout

    try:
        # An installed copy inside some other repository (a venv in a project) is not a checkout of flowsweep.
        if Path(git("rev-parse", "--show-toplevel").strip()).resolve() != here.parents[1]:
            return tags
        tags["mlflow.source.git.commit"] = git("rev-parse", "HEAD").strip()
        if git("status", "--porcelain", "--untracked-files=no").strip():
            tags["flowsweep.git.dirty"] = "true"
    except (OSError, subprocess.SubprocessError):
        pass
    return tags
