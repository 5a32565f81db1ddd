"""Structures given from outside the job: a masks.json file, an earlier run's masks, a dataset's oracle.

``layout=file layout.path=FILE`` trains the structure in ``FILE``, written in the format
every run logs as its ``masks.json`` artifact::

    {"d": 12, "m": 6, "conditioning": [[0, 2, 4, 6, 8, 10], [1, 3, 5, 7, 9, 11], ...]}

``layout=file layout.run_id=RUN_ID`` takes that artifact from an earlier run of the
job's own tracking store; ``layout=oracle`` trains the planted oracle of a synthetic
dataset (:func:`flowsweep.structure.graph.oracle_structure`). Every instance of the job
trains the same structure. Anything wrong (no file, not JSON, not a structure, another
``d``, ``m`` or depth than the job's, an unknown run) is one :class:`ConfigError` naming
the key and the file or run, raised before any run of the job exists.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Optional

from flowsweep.config import ConfigError
from flowsweep.structure.graph import oracle_structure
from flowsweep.structure import Structure, StructureError

__all__ = ["MASKS_ARTIFACT", "parse_structure", "structure_from_file", "structure_from_run", "oracle"]

#: The artifact every run logs its structure as (flowsweep.app.run).
MASKS_ARTIFACT = "masks.json"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_structure(text: str) -> Structure:
    """The structure in masks.json ``text``; :class:`StructureError` saying what is wrong."""
    try:
        data = json.loads(text)
    except ValueError as error:
        raise StructureError(f"not JSON ({error})") from None
    if not isinstance(data, dict) or not {"d", "m", "conditioning"} <= set(data):
        raise StructureError('not a structure: expected an object with keys "d", "m" and "conditioning"')
    layers = data["conditioning"]
    # Strict types: JSON's 4.0 or true must not pass for an index.
    if not (_is_int(data["d"]) and _is_int(data["m"])):
        raise StructureError(f'"d" and "m" must be integers, got {data["d"]!r} and {data["m"]!r}')
    if not isinstance(layers, list) or not all(isinstance(l, list) and all(map(_is_int, l)) for l in layers):
        raise StructureError('"conditioning" must be a list of lists of feature indices')
    return Structure(data["d"], data["m"], tuple(tuple(layer) for layer in layers))


def _fitting(structure: Structure, d: int, m: int, depth: int) -> Optional[str]:
    """What keeps ``structure`` from being this job's (``None`` when it fits)."""
    for name, have, want, key in (("d", structure.d, d, "the dataset's number of features"),
                                  ("m", structure.m, m, "model.m (null: floor(d/2))"),
                                  ("depth", structure.depth, depth, "depth.layers")):
        if have != want:
            return f"the structure has {name}={have}, the job {want} ({key})"
    return None


def _checked(text: str, key: str, source: str, d: int, m: int, depth: int) -> Structure:
    """The structure in ``text`` if it is this job's; else a :class:`ConfigError` on ``key`` naming ``source``."""
    try:
        structure = parse_structure(text)
    except StructureError as error:
        raise ConfigError(key, f"{source}: {error}") from None
    mismatch = _fitting(structure, d, m, depth)
    if mismatch:
        raise ConfigError(key, f"{source}: {mismatch}")
    return structure


def structure_from_file(path: str, d: int, m: int, depth: int) -> Structure:
    """The structure in masks.json ``path``, checked against the job's ``d``, ``m`` and ``depth``."""
    file = Path(path).expanduser()
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("layout.path", f"{file}: no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError("layout.path", f"{file}: cannot read it ({error})") from None
    return _checked(text, "layout.path", str(file), d, m, depth)


def structure_from_run(run_id: str, tracking_uri: str, d: int, m: int, depth: int) -> Structure:
    """The ``masks.json`` artifact of run ``run_id`` in the store at ``tracking_uri``, checked like a file."""
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient(tracking_uri).get_run(run_id)
    except MlflowException as error:
        raise ConfigError("layout.run_id", f"no run {run_id} in {tracking_uri} ({error.error_code})") from None
    with tempfile.TemporaryDirectory(prefix="flowsweep-masks-") as tmp:
        try:
            local = download_artifacts(run_id=run_id, artifact_path=MASKS_ARTIFACT, dst_path=tmp,
                                       tracking_uri=tracking_uri)
            text = Path(local).read_text(encoding="utf-8")
        except (MlflowException, OSError, UnicodeDecodeError) as error:
            raise ConfigError("layout.run_id", f"run {run_id} has no readable {MASKS_ARTIFACT} artifact "
                                               f"({type(error).__name__})") from None
    return _checked(text, "layout.run_id", f"{MASKS_ARTIFACT} of run {run_id}", d, m, depth)


def oracle(graph: Optional[tuple[tuple[int, int], ...]], dataset: str, d: int, m: int, depth: int) -> Structure:
    """The oracle structure of a dataset's planted ``graph``; an error for datasets without one."""
    if not graph:
        raise ConfigError("layout", f"layout=oracle needs a dataset with planted dependencies "
                                    f"(dataset=synthetic_*); {dataset} has none")
    return oracle_structure(graph, d, m, depth)
