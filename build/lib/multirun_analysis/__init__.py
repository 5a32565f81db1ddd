"""Cross-sweep tables and figures from flowsweep's MLflow runs.

:mod:`~multirun_analysis.load` reads the FINISHED runs of one or more sweeps,
:mod:`~multirun_analysis.aggregate` averages instances into cells,
:mod:`~multirun_analysis.tables` renders the paper's tables,
:mod:`~multirun_analysis.histories` and :mod:`~multirun_analysis.figures` draw curves,
:mod:`~multirun_analysis.report` writes (and logs) it all, :mod:`~multirun_analysis.cli`
is ``python -m multirun_analysis``.
"""

from multirun_analysis.aggregate import DEFAULT_GROUP_BY, aggregate, mixed_params
from multirun_analysis.load import AnalysisError, SweepRuns, load_runs
from multirun_analysis.tables import Table, build_tables, render

__all__ = [
    "DEFAULT_GROUP_BY",
    "AnalysisError",
    "SweepRuns",
    "Table",
    "aggregate",
    "build_tables",
    "load_runs",
    "mixed_params",
    "render",
]
