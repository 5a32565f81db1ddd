"""The saved form of one trained density: a folder of two files, no pickle.

``density.json`` (UTF-8 JSON)::

    {"format": "flowsweep.density", "version": 1,
     "columns": ["fLength", ...],            # the table's columns, in the model's order
     "spec": {"d": 10, "m": 5, "depth": 4, ...},   # every field of flowsweep.model.ModelSpec
     "structure": {"d": 10, "m": 5, "conditioning": [[...], ...]},   # as masks.json
     "maps": ["standardize", "whiten"],      # model.preprocess, in the order applied
     "widths": [0.001, ...] | null,          # dataset.dequantize's noise widths, raw units
     "train_log_density_quantiles": {"0.001": ..., "0.01": ..., ...},   # nats, raw units
     "source": {...}}                        # run, dataset, config: for people, never read back

``params.npz`` (NumPy, ``allow_pickle=False``): ``theta`` ``[P]`` float32 (the model's row of
:attr:`flowsweep.model.CouplingFlows.theta`, laid out by ``ModelSpec.layout()``), and per map
``i`` its arrays as ``map{i}.<name>`` (float64).

The spec is stored field by field and rebuilt as ``ModelSpec(**spec)``: a model family added
to ``ModelSpec`` is saved and loaded with no change here. A file of another ``version`` is
refused with one line; :data:`VERSION` grows when a reader of the old one would misread it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Optional

import numpy as np

from flowsweep.data.maps import Map, Standardize, Whiten
from flowsweep.model import ModelSpec
from flowsweep.structure import Structure

__all__ = ["FORMAT", "VERSION", "SPEC_FILE", "PARAMS_FILE", "ModelFormatError", "SavedDensity", "write", "read"]

FORMAT, VERSION = "flowsweep.density", 1
SPEC_FILE, PARAMS_FILE = "density.json", "params.npz"
#: Quantiles of the training rows' log-densities kept for the outlier flag.
QUANTILES = (0.001, 0.01, 0.05, 0.5)
_MAPS: dict[str, Any] = {"standardize": Standardize, "whiten": Whiten}


class ModelFormatError(ValueError):
    """A saved density cannot be read; the message names the file and what is wrong."""


@dataclasses.dataclass(frozen=True, eq=False)
class SavedDensity:
    """Everything a trained density is, as values (see the module docstring)."""

    columns: tuple[str, ...]
    spec: ModelSpec
    structure: Structure
    theta: np.ndarray
    maps: tuple[Map, ...] = ()
    widths: Optional[tuple[float, ...]] = None
    quantiles: dict[float, float] = dataclasses.field(default_factory=dict)
    source: dict[str, Any] = dataclasses.field(default_factory=dict)


def write(folder: Path, saved: SavedDensity) -> None:
    """Write ``density.json`` and ``params.npz`` into ``folder`` (created if missing)."""
    folder.mkdir(parents=True, exist_ok=True)
    content = {
        "format": FORMAT, "version": VERSION, "columns": list(saved.columns),
        "spec": dataclasses.asdict(saved.spec), "structure": saved.structure.to_dict(),
        "maps": [m.kind for m in saved.maps], "widths": None if saved.widths is None else list(saved.widths),
        "train_log_density_quantiles": {str(q): float(v) for q, v in saved.quantiles.items()},
        "source": saved.source,
    }
    (folder / SPEC_FILE).write_text(json.dumps(content, indent=1, default=str))
    arrays: dict[str, Any] = {"theta": np.asarray(saved.theta, dtype=np.float32)}
    for i, step in enumerate(saved.maps):
        arrays.update({f"map{i}.{k}": np.asarray(v, dtype=np.float64) for k, v in step.arrays().items()})
    np.savez(folder / PARAMS_FILE, **arrays)


def read(folder: Path) -> SavedDensity:
    """The density saved in ``folder``; :class:`ModelFormatError` naming the file otherwise."""
    spec_file, params_file = folder / SPEC_FILE, folder / PARAMS_FILE
    if not spec_file.is_file():
        raise ModelFormatError(f"{folder}: no {SPEC_FILE}; not a flowsweep density (a run logs one under 'model/')")
    try:
        content = json.loads(spec_file.read_text())
    except ValueError as error:
        raise ModelFormatError(f"{spec_file}: not JSON ({error})") from None
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        raise ModelFormatError(f"{spec_file}: not a {FORMAT} file")
    if content.get("version") != VERSION:
        raise ModelFormatError(f"{spec_file}: format version {content.get('version')!r}; this flowsweep reads "
                               f"version {VERSION} only")
    try:
        with np.load(params_file, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        spec = ModelSpec(**content["spec"])
        structure = Structure.from_dict(content["structure"])
        maps = tuple(_map(kind, {k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith(f"map{i}.")})
                     for i, kind in enumerate(content["maps"]))
        theta = arrays["theta"]
        if theta.shape != (spec.layout().numel,):
            raise ValueError(f"theta has shape {theta.shape}, the spec needs ({spec.layout().numel},)")
    except FileNotFoundError:
        raise ModelFormatError(f"{params_file}: missing") from None
    except (KeyError, TypeError, ValueError) as error:
        raise ModelFormatError(f"{folder}: damaged flowsweep density ({type(error).__name__}: {error})") from None
    widths = content.get("widths")
    return SavedDensity(
        columns=tuple(content["columns"]), spec=spec, structure=structure, theta=theta, maps=maps,
        widths=None if widths is None else tuple(widths),
        quantiles={float(q): float(v) for q, v in content.get("train_log_density_quantiles", {}).items()},
        source=content.get("source", {}),
    )


def _map(kind: str, arrays: dict[str, np.ndarray]) -> Map:
    if kind not in _MAPS:
        raise ValueError(f"unknown map {kind!r}")
    if kind == "whiten":
        return Whiten(arrays["matrix"], float(arrays["log_det"]))
    return Standardize(arrays["mean"], arrays["std"])
