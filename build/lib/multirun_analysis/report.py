"""Write an analysis to a folder (tables in every format, the long-form aggregate, figures)
and, optionally, log that folder as one MLflow summary run.

Files in the folder:

* ``aggregate.csv``: one row per cell, both splits (``n``, ``n_diverged``, means, stds);
* ``tables_<split>.txt`` / ``.md`` / ``.tex``: the paper-form tables;
* the PNG figures of :mod:`multirun_analysis.figures`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd
from mlflow.entities import Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient

from multirun_analysis.figures import write_figures
from multirun_analysis.load import SUMMARY_TAG, SweepRuns
from multirun_analysis.tables import Table, render

__all__ = ["TABLE_FILES", "write_report", "log_summary"]

#: File suffix of each table format.
TABLE_FILES = {"text": "txt", "markdown": "md", "latex": "tex"}
#: MLflow's limit on a tag value, in characters.
_TAG_LIMIT = 5000


def write_report(out: Path, client: MlflowClient, runs: SweepRuns, agg: pd.DataFrame, tables: Sequence[Table],
                 group_by: Sequence[str], precision: int = 3, figures: bool = True,
                 figure_format: str = "png") -> list[Path]:
    """Tables, aggregate and (with ``figures``) the figures as ``figure_format`` files into ``out``
    (created); the files written."""
    out.mkdir(parents=True, exist_ok=True)
    split = tables[0].split
    written = [out / "aggregate.csv"]
    agg.to_csv(written[0], index=False)
    for fmt, suffix in TABLE_FILES.items():
        path = out / f"tables_{split}.{suffix}"
        path.write_text(render(tables, fmt, precision))
        written.append(path)
    if figures:
        written += write_figures(client, runs.frame, tables, group_by, out, figure_format)
    return written


def log_summary(client: MlflowClient, runs: SweepRuns, folder: Path, settings: dict[str, str]) -> str:
    """One FINISHED run tagged :data:`~multirun_analysis.load.SUMMARY_TAG` in the analysed
    experiment, with ``settings`` as params and ``folder`` as artifacts; returns its id.

    The analysis never reads such runs back as model instances.
    """
    experiment = client.get_experiment_by_name(runs.experiment)
    sweeps = ",".join(runs.sweeps)
    tags = {SUMMARY_TAG: "true", "multirun_analysis.sweeps": sweeps[:_TAG_LIMIT],
            "multirun_analysis.runs": str(len(runs.frame))}
    run = client.create_run(experiment.experiment_id, run_name="analysis summary", tags=tags)
    run_id = run.info.run_id
    try:
        client.log_batch(run_id, params=[Param(k, str(v)) for k, v in settings.items()],
                         tags=[RunTag("mlflow.note.content", runs.describe())])
        client.log_artifacts(run_id, str(folder))
    except BaseException:
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
        raise
    client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))
    return run_id
