"""Wall time per phase of a real job, by timing the functions that carry out each phase.

:func:`main` runs ``main.py`` exactly as ``python main.py ...`` would (same process
layout, same Hydra launcher), after wrapping the job's phase functions with a clock; at
exit it writes ``{phase: seconds}`` as JSON to the file named by
``$FLOWSWEEP_BENCH_TIMINGS``. Only the basic launcher runs jobs in this process; other
launchers' workers are not timed.

    FLOWSWEEP_BENCH_TIMINGS=t.json python -m flowsweep.bench.phases dataset=magic layout=opt depth=8
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import resource
import runpy
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

__all__ = ["PHASES", "LOGGING", "TIMINGS_ENV", "WRITER_CPU", "PhaseClock", "main"]

TIMINGS_ENV = "FLOWSWEEP_BENCH_TIMINGS"
#: Key of the timings file: CPU seconds of the MLflow writer process, which runs beside the
#: job (it costs the job wall time only where the job waits for it, in the phases above).
WRITER_CPU = "mlflow writer process (CPU s, beside the job)"

#: phase -> (module, attribute path) of the functions that do it. The "mlflow" and "figures"
#: phases together are everything a job spends on logging: store set-up, runs, metrics,
#: figures and artifacts.
PHASES: dict[str, list[tuple[str, str]]] = {
    "mlflow: store and runs": [
        ("flowsweep.app.callbacks", "TrackingCallback.on_multirun_start"),
        ("flowsweep.app.plan", "check_reachable"),
        ("flowsweep.app.run", "open_store"),
        ("flowsweep.app.run", "resume_job"),
        ("flowsweep.record.run_group", "RunGroup.__init__"),
    ],
    "mlflow: metrics and artifacts": [
        ("flowsweep.record.results", "LiveCurve.__call__"),
        ("flowsweep.record.results", "LiveCurve.finish"),
        ("flowsweep.app.run", "log_search_metrics"),
        ("flowsweep.app.run", "log_instances"),
        ("flowsweep.app.run", "log_job"),
        ("flowsweep.record.run_group", "RunGroup.close"),
        ("flowsweep.app.task", "finish"),  # a sweep's last MLflow writes, waited for at its end
    ],
    "mlflow: models": [("flowsweep.app.run", "log_models"), ("flowsweep.app.run", "register")],
    # The job only hands a figure's data to the writer process, which draws it beside the job.
    "figures (handed to the writer)": [("flowsweep.record.run_group", "RunGroup.figure"),
                                       ("flowsweep.density.figure", "log_samples_figure")],
    "data loading": [("flowsweep.app.plan", "load_dataset"), ("flowsweep.app.plan", "preprocessed")],
    "structure search": [("flowsweep.app.run", "search_job"), ("flowsweep.app.run", "job_dependence")],
    "final training": [("flowsweep.app.run", "train")],
    "evaluation": [("flowsweep.app.run", "evaluate_bpd"), ("flowsweep.app.run", "row_bpd")],
}
#: The phases that make up logging.
LOGGING = ("mlflow: store and runs", "mlflow: metrics and artifacts", "mlflow: models", "figures (handed to the writer)")

_MAIN = Path(__file__).resolve().parents[2] / "main.py"


class PhaseClock:
    """Accumulates wall seconds per phase; :meth:`install` wraps the functions of :data:`PHASES`.

    Time is exclusive: a phase's function called inside another's (figures inside the
    logging of metrics) counts for the inner phase only, so phases add up to the total.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._inner: list[float] = []  # per open call: time already counted by calls inside it

    def wrap(self, phase: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            self._inner.append(0.0)
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                self.seconds[phase] += elapsed - self._inner.pop()
                if self._inner:
                    self._inner[-1] += elapsed

        return timed

    def install(self) -> None:
        """Wrap every target; one that no longer exists (the code moved on) is reported and skipped."""
        for phase, targets in PHASES.items():
            for module_name, path in targets:
                owner: Any = importlib.import_module(module_name)
                *parents, name = path.split(".")
                try:
                    for parent in parents:
                        owner = getattr(owner, parent)
                    setattr(owner, name, self.wrap(phase, getattr(owner, name)))
                except AttributeError:
                    print(f"flowsweep.bench: {module_name}.{path} not found, not timed", file=sys.stderr)


def main() -> None:
    """Run ``main.py`` with ``sys.argv[1:]`` under a :class:`PhaseClock`."""
    clock = PhaseClock()
    clock.install()
    sys.argv = [str(_MAIN), *sys.argv[1:]]
    try:
        runpy.run_path(str(_MAIN), run_name="__main__")
    finally:
        from flowsweep.record.mlflow_writer import close_writers

        # The writers are this process's only children still running; waiting for them
        # adds their CPU time to the waited-for children's.
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        close_writers()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        seconds = {**clock.seconds, WRITER_CPU: after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime}
        out = os.environ.get(TIMINGS_ENV)
        if out:
            Path(out).write_text(json.dumps(seconds))


if __name__ == "__main__":
    main()
