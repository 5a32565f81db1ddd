"""The MLflow UI view a job's ``look`` line opens: results at once, best job first.

MLflow's UI (3.17) keeps a *shared view state* as an experiment tag
``mlflow.sharedViewState.<key>`` and opens it at ``#/experiments/<id>/runs?viewStateShareKey=<key>``
(``useSharedExperimentViewState`` in MLflow's ``experiment-page/hooks``). The tag's value is
plain JSON (the UI also reads a deflate-compressed one): the runs table's search facets
(``searchFilter``, ``orderByKey``, ``orderByAsc``, ``startTime``, ``lifecycleFilter``,
``modelVersionFilter``, ``datasetsFilter``) and its UI state (``selectedColumns`` and the other
``EXPERIMENT_PAGE_UI_STATE_FIELDS``); columns and sort keys are canonical keys such as
``metrics.`val_bpd_mean``` (``makeCanonicalSortKey``).

flowsweep's view sorts jobs by their mean validation bpd (lowest, the best, first), shows the
bpd columns of jobs and of instances, the settings that tell jobs apart and the runs'
descriptions. Sorted by a metric, MLflow lists runs flat (it nests instances under their job,
``mlflow.parentRunId``, only when sorted by start time): the jobs' rows come first, their
instances (which have no ``val_bpd_mean``) after; a job's page lists its instances.
"""

from __future__ import annotations

import json
from typing import Any

from mlflow.tracking import MlflowClient

__all__ = ["VIEW_KEY", "VIEW_TAG", "VIEW_COLUMNS", "VIEW_ORDER", "VIEW_WIDTHS", "view_state", "write_view", "runs_page",
           "run_page"]

#: The share key of flowsweep's view (``?viewStateShareKey=flowsweep``).
VIEW_KEY = "flowsweep"
#: The experiment tag that holds it.
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
#: The runs table's columns, in order: a job's aggregates, then an instance's numbers, then
#: the settings a grid varies and the run's one-line description.
VIEW_COLUMNS = (
    [f"metrics.`{key}`" for key in ("val_bpd_mean", "val_bpd_std", "test_bpd_mean", "test_bpd_std", "train_bpd_mean",
                                    "diverged_count", "val_bpd", "test_bpd", "train_bpd", "diverged")]
    + [f"params.`{key}`" for key in ("dataset", "layout", "depth", "search")]
    + ["attributes.`Description`", "attributes.`Duration`"]
)


#: The order the runs table shows its columns in (MLflow's table otherwise puts the metric columns
#: in alphabetical order, ``diverged`` first); a column it does not name goes after these.
VIEW_ORDER = (["attributes.`Run Name`", "attributes.`Description`"]
              + [c for c in VIEW_COLUMNS if c.startswith(("metrics.", "params."))] + ["attributes.`Duration`"])
#: Pixels: a bpd in full (``-1.5075928...`` is cut at the table's default width) and a description's start.
VIEW_WIDTHS = {**{c: 130 for c in VIEW_COLUMNS if c.startswith("metrics.")}, "attributes.`Description`": 300}


def view_state() -> dict[str, Any]:
    """The shared view state: every field the UI reads, so none falls back to ``undefined``."""
    return {
        # search facets
        "searchFilter": "",
        "orderByKey": "metrics.`val_bpd_mean`",
        "orderByAsc": True,  # bpd: lower is better
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "modelVersionFilter": "All Runs",
        "datasetsFilter": [],
        # UI state
        "selectedColumns": VIEW_COLUMNS,
        "columnOrder": VIEW_ORDER,
        "columnWidths": VIEW_WIDTHS,
        "runsExpanded": {},
        "runsPinned": [],
        "runsHidden": [],
        "runsVisibilityMap": {},
        "runsHiddenMode": "SHOW_ALL",  # the charts show every run, not the first 10
        "viewMaximized": False,
        "runListHidden": False,
        "isAccordionReordered": False,
        "useGroupedValuesInCharts": True,
        "hideEmptyCharts": True,
        "groupBy": None,
        "groupsExpanded": {},
        "autoRefreshEnabled": True,
        "globalLineChartConfig": {"xAxisKey": "step", "lineSmoothness": 0, "selectedXAxisMetricKey": ""},
    }


def write_view(client: MlflowClient, experiment_id: str) -> None:
    """Write the view onto the experiment (idempotent: every job writes the same value)."""
    from mlflow.exceptions import MlflowException

    value = json.dumps(view_state(), separators=(",", ":"))
    experiment = client.get_experiment(experiment_id)
    if experiment.tags.get(VIEW_TAG) == value:
        return
    try:
        client.set_experiment_tag(experiment_id, VIEW_TAG, value)
    except MlflowException:
        # Parallel jobs' first writes race (PostgreSQL: a duplicate key of the new tag); the
        # tag is then there, and setting it again updates it.
        if client.get_experiment(experiment_id).tags.get(VIEW_TAG) != value:
            client.set_experiment_tag(experiment_id, VIEW_TAG, value)


def runs_page(experiment_id: str) -> str:
    """The UI address (after the server's root) of the experiment's runs table in flowsweep's view.

    ``workflowType=machine_learning`` keeps MLflow 3.17 off its GenAI pages.
    """
    return f"#/experiments/{experiment_id}/runs?viewStateShareKey={VIEW_KEY}&workflowType=machine_learning"


def run_page(experiment_id: str, run_id: str) -> str:
    """The UI address of one run's page, in the model-training view."""
    return f"#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"
