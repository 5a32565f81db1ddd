"""Load a dataset as train/validation/test float32 tensors: parse, check, split, dequantize, standardize.

Known datasets (magic, turbine, sonar, yeast) are described entirely by their option
file in ``conf/dataset/``: raw files with address, sha256 and row count, column names,
label columns and the default features. ``dataset=csv`` reads any CSV file with a
header row from ``dataset.path``. ``dataset.synthetic`` generates a table with planted
dependencies instead (:mod:`flowsweep.data.synthetic`; its edges become ``Dataset.graph``,
its test rows are drawn apart). Without a fixed test file, the test split is a
seeded random hold-out of ``round(test_fraction * n)`` rows. A validation split of
``round(validation_fraction * n_train)`` rows is then cut from the training rows (seeded
by ``split_seed`` too, or the last rows in file order with ``validation_rows=last``):
model selection (early stopping, structure search, a sweeper's objective) reads it,
never the test rows.

``dataset.dequantize`` adds uniform noise of each column's recorded resolution (``10^-k``
for values written with ``k`` decimals) to every split, once, from a seeded stream: a
density can then no longer put spikes on the grid of a column such as yeast's ``erl``,
which takes two values.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from ..config import DatasetConfig
from ..seeding import SplitStream
from .maps import Map, Standardize, Whiten
from .sources import DataError, Located, expected_hash, locate, read_file, sha256_hex
from .tables import read_table, resolution

__all__ = ["Dataset", "load_dataset", "preprocessed", "standardized", "whitened", "resolution"]

#: Stream keys under ``split_seed`` (the test hold-out uses the seed itself).


@dataclass(frozen=True, eq=False)  # eq=False: == on tensors is elementwise, not a bool
class Dataset:
    """A dataset split into train, validation and test, in model space.

    ``train`` is ``[n_train, d]``, ``valid`` ``[n_valid, d]`` (possibly no rows) and
    ``test`` ``[n_test, d]``, float32, one column per name in ``columns``. When
    standardized, ``log_det`` (nats per sample) is the sum of the log train std per
    feature: raw-unit NLL = model-space NLL + ``log_det``; in raw units it is 0.0.
    ``graph`` holds the planted ``(parent, child)`` feature pairs of a synthetic
    dataset, ``None`` where the dependencies are unknown.
    """

    name: str
    columns: tuple[str, ...]
    train: torch.Tensor
    test: torch.Tensor
    log_det: float
    valid: Optional[torch.Tensor] = None
    graph: Optional[tuple[tuple[int, int], ...]] = None
    #: The fixed maps from raw rows to these (``model.preprocess``), in the order applied.
    maps: tuple[Map, ...] = ()
    #: Each column's dequantization width (raw units, 0: none) where ``dataset.dequantize`` added noise.
    widths: Optional[tuple[float, ...]] = None

    def __post_init__(self) -> None:
        if self.valid is None:
            object.__setattr__(self, "valid", self.train[:0])

    @property
    def d(self) -> int:
        """Number of features."""
        return int(self.train.shape[1])

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, d={self.d}, n_train={len(self.train)}, "
            f"n_valid={len(self.valid)}, n_test={len(self.test)}, log_det={self.log_det:.4f})"
        )


def load_dataset(cfg: Union[DictConfig, Mapping[str, Any], DatasetConfig], data_dir: Optional[str] = None) -> Dataset:
    """Load the dataset that the ``dataset`` config node describes.

    ``data_dir`` is a folder laid out as ``<data_dir>/<name>/<file>``; files missing
    there come from the cache or are downloaded (see :mod:`flowsweep.data.sources`).
    Raises :class:`DataError` naming the file or key and what to do.
    """
    spec = _as_dict(cfg)
    name = str(spec["name"])
    graph = None
    if spec["synthetic"] is not None:
        # Imported here: ``python -m flowsweep.data.synthetic`` must find it not yet imported.
        from .synthetic import generate

        for key in ("path", "columns", "files"):
            if spec[key]:
                raise DataError(f"dataset.{key} is not read by the synthetic dataset {name}; drop it.")
        columns, train, test, graph = generate(spec["synthetic"])
    else:
        columns, train, test = _read_splits(name, spec, data_dir)
    seed = int(spec["split_seed"])
    train, valid = _cut_validation(train, float(spec["validation_fraction"]), seed, name, str(spec["validation_rows"]))
    splits = [train, valid, test]
    widths = None
    if spec["dequantize"]:
        width = resolution(np.concatenate(splits))
        widths = tuple(float(w) for w in width)
        rng = np.random.default_rng([seed, SplitStream.DEQUANTIZE])
        splits = [x + rng.uniform(0.0, 1.0, size=x.shape) * width for x in splits]
    train, valid, test = (torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)) for x in splits)
    return Dataset(name=name, columns=tuple(columns), train=train, valid=valid, test=test, log_det=0.0, graph=graph,
                   widths=widths)


def standardized(data: Dataset, key: str = "model.preprocess") -> Dataset:
    """Every split scaled by the train mean and std (ddof=0, computed in float64).

    ``log_det`` grows by the map's ``sum(log std)`` (nats per sample), so bpd computed
    on the result stays in the units of ``data``. ``key`` is the config key that asked
    for it, named by the error for a constant column.
    """
    train = data.train.double()
    mean, std = train.mean(0), train.std(0, unbiased=False)
    constant = [c for c, s in zip(data.columns, std.tolist()) if not s > 0]
    if constant:
        raise DataError(
            f"{key}: column(s) {constant} of {data.name} are constant in the training split "
            f"(std 0); leave them out with dataset.columns or set {key}=none."
        )

    step = Standardize(mean.numpy(), std.numpy())
    return dataclasses.replace(
        data, train=step.apply(data.train), valid=step.apply(data.valid), test=step.apply(data.test),
        log_det=data.log_det + float(std.log().sum()), maps=data.maps + (step,),
    )


def preprocessed(data: Dataset, preprocess: str) -> Dataset:
    """``data`` through the fixed map of ``model.preprocess``: ``standardize``, ``whiten`` or ``none``."""
    if preprocess == "none":
        return data
    return standardized(data) if preprocess == "standardize" else whitened(data)


def whitened(data: Dataset, key: str = "model.preprocess") -> Dataset:
    """:func:`standardized`, then every split mapped by ``W = S^(-1/2)`` (ZCA), where ``S`` is the
    Ledoit-Wolf shrinkage estimate (scikit-learn) of the standardized training rows' covariance:
    the flow then starts from a full-covariance Gaussian fit. ``log_det`` grows by both maps'
    log-determinants, so bpd computed on the result stays in the units of ``data``."""
    from sklearn.covariance import LedoitWolf

    scaled = standardized(data, key)
    estimate = LedoitWolf(assume_centered=True).fit(scaled.train.double().numpy())
    values, vectors = np.linalg.eigh(estimate.covariance_)
    step = Whiten((vectors / np.sqrt(values)) @ vectors.T, 0.5 * float(np.log(values).sum()))
    return dataclasses.replace(
        scaled, train=step.apply(scaled.train), valid=step.apply(scaled.valid), test=step.apply(scaled.test),
        log_det=scaled.log_det + step.log_det, maps=scaled.maps + (step,),
    )


def _as_dict(cfg: Union[DictConfig, Mapping[str, Any], DatasetConfig]) -> dict[str, Any]:
    if isinstance(cfg, DatasetConfig):
        cfg = OmegaConf.structured(cfg)
    values = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    spec = {f.name: values.get(f.name, "???") for f in dataclasses.fields(DatasetConfig)}
    if spec["name"] in (None, "???"):
        raise DataError("dataset.name: missing; choose a dataset, e.g. dataset=magic or dataset=csv.")
    missing = [name for name, value in spec.items() if value == "???"]
    if missing:  # the values live in conf/ (dataset_defaults.yaml and the dataset's file), never here
        raise DataError(f"dataset.{missing[0]}: missing; compose the dataset from conf/ (dataset_defaults.yaml)")
    return spec


def _read_splits(name: str, spec: dict[str, Any], data_dir: Optional[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``(columns, train, test)`` of a file-backed dataset: a fixed test split or a seeded hold-out."""
    if spec["files"]:
        if spec["path"]:
            raise DataError(
                f"dataset.path is only read by dataset=csv; dataset {name} reads {list(spec['files'])} "
                f"from data_dir / the cache. Drop dataset.path or use dataset=csv."
            )
        columns, parts = _read_known(name, spec, data_dir)
    else:
        columns, parts = _read_csv(spec)
    test_files = list(spec["test_files"])
    if test_files:
        train = np.concatenate([x for f, x in parts.items() if f not in test_files])
        test = np.concatenate([parts[f] for f in test_files])
    else:
        train, test = _hold_out(np.concatenate(list(parts.values())), float(spec["test_fraction"]), int(spec["split_seed"]), name)
    return columns, train, test


def _read_known(name: str, spec: dict[str, Any], data_dir: Optional[str]) -> tuple[list[str], dict[str, np.ndarray]]:
    files: dict[str, dict[str, Any]] = spec["files"]
    unknown = [f for f in spec["test_files"] if f not in files]
    if unknown or (files and len(spec["test_files"]) == len(files)):
        raise DataError(f"dataset.test_files: {spec['test_files']} must be some but not all of dataset.files {list(files)}.")
    located = locate(name, files, data_dir)
    columns: Optional[list[str]] = None
    parts: dict[str, np.ndarray] = {}
    for fname, where in located.items():
        file_spec = files[fname]
        hint = _repair_hint(where, file_spec)
        data = read_file(where.path)  # read once: parsed and hashed from memory
        x, cols = read_table(
            data, str(where.path), names=spec["names"], sep=spec["sep"], labels=spec["labels"],
            wanted=_wanted(spec), key=_key(spec), hint=hint, dequantize=bool(spec["dequantize"]),
        )  # fmt: skip
        rows = file_spec.get("rows")
        if rows is not None and len(x) != int(rows):
            raise DataError(
                f"{where.path}: {len(x)} data rows, expected {rows}; the file is truncated or not the UCI original. {hint}"
            )
        expected = expected_hash(file_spec)
        if expected and not where.verified:
            # Final guard: a change that still parses (a digit flipped) must not go unnoticed.
            actual = sha256_hex(data)
            if actual != expected:
                raise DataError(f"{where.path}: sha256 is {actual}, expected {expected}; the file is corrupted. {hint}")
        if columns is not None and cols != columns:
            raise DataError(f"{where.path}: columns {cols} differ from those of the other files, {columns}. {hint}")
        columns, parts[fname] = cols, x
    assert columns is not None
    return columns, parts


def _read_csv(spec: dict[str, Any]) -> tuple[list[str], dict[str, np.ndarray]]:
    if not spec["path"]:
        raise DataError("dataset.path is not set: dataset=csv needs the CSV file to read, e.g. dataset.path=/data/my.csv.")
    path = Path(str(spec["path"])).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such file (dataset.path). Point dataset.path at a CSV file with a header row.")
    hint = "Fix the file, or choose other columns with dataset.columns."
    x, columns = read_table(
        read_file(path), str(path), names=spec["names"], sep=spec["sep"], labels=spec["labels"],
        wanted=_wanted(spec), key=_key(spec), hint=hint, dequantize=bool(spec["dequantize"]),
    )  # fmt: skip
    return columns, {path.name: x}


def _wanted(spec: dict[str, Any]) -> Optional[list[Any]]:
    return spec["columns"] if spec["columns"] is not None else spec["default_columns"]


def _key(spec: dict[str, Any]) -> str:
    return "dataset.columns" if spec["columns"] is not None else "dataset.default_columns"


def _repair_hint(where: Located, file_spec: dict[str, Any]) -> str:
    url = file_spec.get("url") or "the UCI repository"
    if where.origin == "data_dir":
        return f"Replace it with the original from {url}."
    return f"Delete it so that it is downloaded again from {url}, or replace it with the original."


def _cut_validation(train: np.ndarray, fraction: float, seed: int, name: str,
                    rows: str = "random") -> tuple[np.ndarray, np.ndarray]:
    """``round(fraction * n)`` training rows as the validation split (none for 0): seeded
    random rows, or the ``last`` rows in file order."""
    n = len(train)
    n_valid = round(fraction * n)
    if n_valid and not n_valid < n:
        raise DataError(f"dataset.validation_fraction: {fraction} of the {n} training rows of {name} leaves none to train on.")
    if rows == "last":
        return train[: n - n_valid], train[n - n_valid:]
    order = np.random.default_rng([seed, SplitStream.VALIDATION]).permutation(n)
    return train[np.sort(order[n_valid:])], train[np.sort(order[:n_valid])]


def _hold_out(x: np.ndarray, fraction: float, seed: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Split rows into train and a random test set of ``round(fraction * n)`` rows."""
    n = len(x)
    n_test = round(fraction * n)
    if not 0 < n_test < n:
        raise DataError(
            f"dataset.test_fraction: {fraction} of the {n} rows of {name} leaves {n_test} test and "
            f"{n - n_test} train rows; both splits need at least one row."
        )
    # Its own generator, seeded by split_seed only: the split stays the same whatever the model seeds.
    order = np.random.default_rng(seed).permutation(n)
    return x[np.sort(order[n_test:])], x[np.sort(order[:n_test])]
