"""Typed configuration schema.

The dataclasses below are registered with Hydra's ConfigStore as ``_schema``; the
defaults list of ``conf/config.yaml`` starts with it, so every option file and every
command-line override is type-checked by OmegaConf at composition time. Checks that
need more than a type (``depth.layers >= 1``, a batch that fits the training split)
live in :mod:`flowsweep.config.checks`, which raises :class:`ConfigError` naming the offending
key before any training starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING

__all__ = [
    "ConfigError",
    "DivergedError",
    "DatasetConfig",
    "SyntheticConfig",
    "DepthConfig",
    "ModelConfig",
    "DependenceConfig",
    "TrainConfig",
    "TrackingConfig",
    "Config",
    "register_schema",
    "CHOICES",
]


class ConfigError(ValueError):
    """A configuration value is impossible; the message starts with the key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key

    def __reduce__(self) -> tuple:
        # Picklable, so a failed job's error crosses process boundaries (joblib, submitit).
        return type(self), (self.key, str(self)[len(self.key) + 2 :])


class DivergedError(ConfigError):
    """Every model instance of a job diverged: with these settings the model does not train.

    Named after the likeliest lever, ``train.max_lr``; :meth:`of` names the depth too.
    """

    @classmethod
    def of(cls, instances: int, max_lr: float, depth: int) -> DivergedError:
        return cls("train.max_lr", f"all {instances} instances diverged (non-finite loss or parameters) at "
                                   f"train.max_lr={max_lr:g}, depth {depth}; the job's runs end FAILED. "
                                   f"Try a smaller train.max_lr or depth")


@dataclass
class SyntheticConfig:
    """A table with planted dependencies (flowsweep.data.synthetic); values in conf/dataset/synthetic.yaml."""

    #: pairs | hetero | tree | mixed: the kinds of dependent components.
    family: str = MISSING
    #: Number of features.
    d: int = MISSING
    #: Training rows, the validation split included; the test rows are drawn apart.
    n_train: int = MISSING
    n_test: int = MISSING
    #: adverse (parity masks cover no edge) | friendly (parity masks cover every edge) | shuffled.
    placement: str = MISSING
    #: Seed of the rows and the placement (the validation cut uses dataset.split_seed).
    seed: int = MISSING
    #: Independent Student-t features, besides those left over by the components.
    distractors: int = MISSING
    #: Std of the additive noise of pair and tree children.
    noise: float = MISSING
    #: Slope of the tanh links of pairs and trees.
    gain: float = MISSING
    #: A hetero child's log-scale is amplitude * tanh(parent).
    amplitude: float = MISSING
    #: Degrees of freedom of the distractors.
    dof: float = MISSING


@dataclass
class DatasetConfig:
    """Types only: the values live in ``conf/dataset_defaults.yaml`` and ``conf/dataset/*.yaml``."""

    name: str = MISSING
    batch_size: int = MISSING
    #: Fraction of rows held out as test split (ignored where the dataset has a fixed split).
    test_fraction: float = MISSING
    #: Seed of the hold-out split, independent of the model instances' seeds.
    split_seed: int = MISSING
    #: Feature columns to keep (names or 0-based positions); null keeps the default set.
    columns: Optional[list[Any]] = MISSING
    #: ``dataset=csv`` only: the CSV file to read.
    path: Optional[str] = MISSING
    #: Share of the training rows cut off as the validation split (seeded by split_seed);
    #: 0 trains on every training row and leaves no validation split.
    validation_fraction: float = MISSING
    #: Which training rows validate: ``random`` (seeded) or ``last`` (the last rows in file
    #: order: for a table ordered in time whose test split is later, such as turbine's years).
    validation_rows: str = MISSING
    #: Add uniform noise of each column's recorded resolution (10^-decimals) to every split, so
    #: that no density wins by spikes on a column's grid (yeast's erl takes two values).
    dequantize: bool = MISSING
    #: Raw files of a known dataset, in reading order: file name -> {url, sha256, rows,
    #: member}. ``member`` names the file inside the archive at ``url``; ``rows`` and
    #: ``sha256`` are checked on load. Empty for ``dataset=csv``.
    files: dict[str, Any] = MISSING
    #: Files (keys of ``files``) forming a fixed test split; empty means a seeded hold-out.
    test_files: list[str] = MISSING
    #: Column names of a headerless file in file order; null means line 1 is a header.
    names: Optional[list[str]] = MISSING
    #: Field separator: a single character, or ``\s+`` for runs of whitespace.
    sep: str = MISSING
    #: Columns that are not features (class labels, ids): read as text, never used.
    labels: list[str] = MISSING
    #: Feature columns used when ``columns`` is null; null means every non-label column.
    default_columns: Optional[list[Any]] = MISSING
    #: A generated table with planted dependencies instead of files (dataset=synthetic*).
    synthetic: Optional[SyntheticConfig] = MISSING


@dataclass
class DepthConfig:
    #: Number of layers L (affine constant + affine coupling each).
    layers: int = MISSING


@dataclass
class ModelConfig:
    #: Number of conditioning features per coupling; null means floor(d / 2).
    m: Optional[int] = MISSING
    #: Types only below: the values and their meaning live in ``conf/config.yaml`` and
    #: flowsweep.model.spec. The fixed map ahead of layer 1 (standardize | whiten | none).
    preprocess: str = MISSING
    #: The paper's open choices: layer order, constant transform, direction, initialisation,
    #: conditioner (and its hidden units).
    order: str = MISSING
    constant: str = MISSING
    direction: str = MISSING
    init: str = MISSING
    conditioner: str = MISSING
    #: Hidden layer widths of the mlp conditioner: a list, or an int for one layer.
    hidden: Any = MISSING
    activation: str = MISSING
    #: affine | spline, and the spline's bins and tail bound.
    coupling: str = MISSING
    bins: int = MISSING
    tail_bound: float = MISSING


@dataclass
class DependenceConfig:
    """See flowsweep.structure.dependence: the measure, the training rows it reads, the layers' discount.
    Types only: the values live in ``conf/config.yaml``."""

    measure: str = MISSING
    rows: int = MISSING
    discount: float = MISSING


@dataclass
class TrainConfig:
    """Types only: the values live in ``conf/config.yaml`` (see flowsweep.training.Recipe)."""

    #: Gradient steps of the final training (paper: 1250).
    steps: int = MISSING
    optimizer: str = MISSING
    schedule: str = MISSING
    momentum: float = MISSING
    #: Learning-rate bounds (cyclic: between them; cosine: from max_lr down to base_lr;
    #: constant: max_lr) and the cyclic half-cycle in steps.
    base_lr: float = MISSING
    max_lr: float = MISSING
    step_size_up: int = MISSING
    mode: str = MISSING
    weight_decay: float = MISSING
    clip_norm: Optional[float] = MISSING
    #: Steps between validation evaluations; early stopping after ``patience`` of them
    #: without improvement (null: off).
    eval_every: int = MISSING
    patience: Optional[int] = MISSING
    #: Threads while training: the native kernel splits the models over them (same numbers
    #: for any count); PyTorch's kernel uses them inside its operations (sums may round differently).
    threads: int = MISSING
    #: The training step's kernel: ``native`` (C, built on first use; PyTorch's where no
    #: compiler is found), ``torch`` or ``cuda`` (PyTorch's on a CUDA GPU).
    kernel: str = MISSING


@dataclass
class TrackingConfig:
    #: MLflow tracking URI; null means MLFLOW_TRACKING_URI or ./mlflow.db of the launch directory.
    uri: Optional[str] = MISSING
    experiment: str = MISSING
    #: Tag shared by every run of one multirun; null derives it from the sweep directory.
    sweep_id: Optional[str] = MISSING
    #: Config keys (and their sub-keys) not logged as run params (values: conf/config.yaml).
    omit_params: list[str] = MISSING
    #: Seconds between two writes of the growing minibatch-bpd curve while a job trains.
    progress_interval_s: float = MISSING
    #: At most this many points of a minibatch-bpd curve become metric points (every k-th step).
    curve_points: int = MISSING
    #: Log every converged instance's trained model as ``runs:/<id>/model`` (flowsweep.density).
    log_models: bool = MISSING
    #: Register the job's best model (by validation bpd) under this Model Registry name; null: do not.
    register: Optional[str] = MISSING


@dataclass
class Config:
    dataset: DatasetConfig = MISSING
    #: A layout class (``_target_``), its ``name`` and its own keys: flowsweep.layouts.
    layout: Any = MISSING
    depth: DepthConfig = MISSING
    #: An optimizer class (``_target_``), its keys and its ``evaluation``: flowsweep.search.
    search: Any = MISSING
    model: ModelConfig = field(default_factory=ModelConfig)
    dependence: DependenceConfig = field(default_factory=DependenceConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    #: Types only below: the values live in ``conf/config.yaml``.
    seed: int = MISSING
    instances: int = MISSING
    data_dir: Optional[str] = MISSING
    #: Show progress bars (they stay quiet anyway when stderr is not a terminal).
    progress: bool = MISSING
    #: Train again even if FINISHED runs of this exact config exist (see flowsweep.record.resume).
    rerun: bool = MISSING


def register_schema() -> None:
    """Register :class:`Config` as ``_schema`` (idempotent)."""
    # Imported here: a saved model is loaded and served without Hydra (flowsweep.density).
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="_schema", node=Config)


#: The keys that take one of a few words, and those words (documented in conf/config.yaml
#: and flowsweep.model.spec); flowsweep.model and flowsweep.training read them from here.
CHOICES: dict[str, tuple[str, ...]] = {
    "model.preprocess": ("standardize", "whiten", "none"),
    "model.order": ("constant_first", "coupling_first"),
    "model.constant": ("exp", "linear"),
    "model.direction": ("normalizing", "generative"),
    "model.init": ("uniform", "zero"),
    "model.conditioner": ("tanh", "mlp"),
    "model.activation": ("relu", "tanh", "elu"),
    "model.coupling": ("affine", "spline"),
    "dependence.measure": ("gain", "mi"),
    "train.optimizer": ("sgd", "adam"),
    "train.schedule": ("cyclic", "constant", "cosine"),
    "train.mode": ("triangular", "triangular2", "exp_range"),
    "train.kernel": ("native", "torch", "cuda"),
    "dataset.validation_rows": ("random", "last"),
}
