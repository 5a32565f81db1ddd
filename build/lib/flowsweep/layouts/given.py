"""``layout=file``: a structure given from outside the job, a masks.json file or an earlier run's.

``layout=file layout.path=FILE`` trains the structure in ``FILE``, written in the format
every run logs as its ``masks.json`` artifact (:meth:`flowsweep.structure.Structure.to_dict`)::

    {"d": 12, "m": 6, "conditioning": [[0, 2, 4, 6, 8, 10], [1, 3, 5, 7, 9, 11], ...]}

``layout=file layout.run_id=RUN_ID`` takes that artifact from an earlier run of the
job's own tracking store. Every instance of the job trains the same structure. Anything
wrong (no file, not JSON, not a structure, another ``d``, ``m`` or depth than the job's,
an unknown run) is one :class:`ConfigError` naming the key and the file or run, raised
before any run of the job exists.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig

from flowsweep.config import ConfigError
from flowsweep.layouts.base import Layout, LayoutJob
from flowsweep.structure import MASKS_ARTIFACT, Structure, StructureError

__all__ = ["Given", "structure_from_file", "structure_from_run"]


@dataclass
class Given(Layout):
    """One given structure for every instance: ``path``, a masks.json, or ``run_id``, an earlier run's."""

    #: A masks.json to train.
    path: Optional[str]
    #: Instead of a path, the id of an earlier run of the same store whose masks.json to train.
    run_id: Optional[str]

    given = True

    def check(self, cfg: DictConfig) -> None:
        if (self.path is None) == (self.run_id is None):
            raise ConfigError("layout.path", f"layout={self.name} needs either layout.path=FILE (a masks.json) "
                                             "or layout.run_id=RUN_ID")

    def structures(self, job: LayoutJob) -> list[Structure]:
        d, m, depth = job.data.d, job.m, job.depth
        given = (structure_from_file(str(self.path), d, m, depth) if self.path is not None
                 else structure_from_run(str(self.run_id), job.tracking_uri, d, m, depth))
        return [given] * len(job.seeds)


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
        structure = Structure.from_json(text)
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
