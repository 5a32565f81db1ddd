"""The dataset a job trained on, as MLflow's run input (``mlflow.log_input``), so the runs
table's Dataset column names it and the UI filters runs by it.

One :class:`mlflow.entities.Dataset` per job, logged to its parent run and every instance run
with the context ``training`` (the writer process does it, :meth:`RunGroup.inputs`):

- ``name``: ``dataset.name`` (``yeast``, ``csv``, ``synthetic_pairs``);
- ``digest``: 8 hex characters of the table and its split: the resolved ``dataset`` config
  (which holds a UCI file's sha256, a generator's settings, the split seed and fractions,
  dequantization) and, for ``dataset=csv``, the file's own bytes;
- ``source``: where the rows come from, as MLflow's own source types write it: ``http``
  (``{"url": ...}``, the UCI file; ``urls`` lists all where there are several), ``local``
  (``{"uri": ...}``, the CSV file) or ``code`` (``{"tags": ...}``, a synthetic generator);
- ``schema``: one ``double`` column per feature, as ``mlflow.data.from_pandas`` writes it;
  ``profile``: the rows of each split.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

__all__ = ["CONTEXT_TAG", "CONTEXT", "dataset_input"]

#: MLflow's input tag for what a run did with a dataset (``mlflow.data.context``), and ours.
CONTEXT_TAG, CONTEXT = "mlflow.data.context", "training"


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _plain(dataset: DictConfig, key: str) -> dict[str, Any]:
    node = dataset.get(key)
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else {}  # type: ignore[return-value]


def _source(dataset: DictConfig) -> tuple[str, dict[str, Any]]:
    files = _plain(dataset, "files")
    urls = list(dict.fromkeys(f["url"] for f in files.values() if isinstance(f, dict) and f.get("url")))
    if urls:
        return "http", {"url": urls[0], **({"urls": urls} if len(urls) > 1 else {})}
    if dataset.get("path"):
        return "local", {"uri": str(Path(str(dataset.path)).expanduser().resolve())}
    settings = _plain(dataset, "synthetic")
    return "code", {"tags": {"flowsweep.dataset": str(dataset.name), **{k: str(v) for k, v in settings.items()}}}


def dataset_input(dataset: DictConfig, columns: tuple[str, ...], rows: dict[str, int]) -> dict[str, str]:
    """The fields of the :class:`mlflow.entities.Dataset` of a job's table: ``dataset`` is
    ``cfg.dataset``, ``rows`` the rows of each split (``{"train": 1068, "val": 268, ...}``)."""
    from mlflow.types import ColSpec, Schema

    source_type, source = _source(dataset)
    content = json.dumps(OmegaConf.to_container(dataset, resolve=True), sort_keys=True, default=str)
    if source_type == "local":
        content += _file_digest(Path(source["uri"]))
    schema = Schema([ColSpec("double", c) for c in columns])
    return {
        "name": str(dataset.name), "digest": hashlib.sha256(content.encode()).hexdigest()[:8],
        "source_type": source_type, "source": json.dumps(source),
        "schema": json.dumps({"mlflow_colspec": schema.to_dict()}),
        "profile": json.dumps({"num_rows": sum(rows.values()), "num_elements": sum(rows.values()) * len(columns),
                               **{f"{split}_rows": n for split, n in rows.items()}}),
    }
