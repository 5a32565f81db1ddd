"""flowsweep's single entry point: compose the config, run the job, return its metric.

    python main.py dataset=magic layout=opt depth=8
    python main.py -m dataset=yeast,sonar layout=parity,random depth=2

Ctrl-C stops a job or a whole sweep at once: the running job ends its MLflow runs
KILLED, no further job starts, and the exit status is 130 (128 + SIGINT), as a shell
reports for a command it interrupted; SIGTERM (``kill``, a scheduler's time limit) does
the same and exits 143. Before exiting, main.py waits for the MLflow writes
a sweep's jobs left pending, so that everything they logged is in the store.
"""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from flowsweep.config import register_schema
from flowsweep.app.interrupt import exit_code, install, interrupted, terminated
from flowsweep.app.joblines import dropping_hydra_job_lines
from flowsweep.config.overrides import quote_depth, unknown_option
from flowsweep.app.task import finish, run_task  # torch and MLflow load once a job runs

register_schema()


# An absolute path: main.py is also imported under another name (tests run it in-process).
@hydra.main(version_base="1.3", config_path=str(Path(__file__).resolve().parent / "conf"), config_name="config")
def main(cfg: DictConfig) -> float:
    return run_task(cfg)


def cli(args: list[str]) -> int:
    """Run ``main.py`` with command-line ``args``; returns the exit status (what tests call in-process)."""
    sys.argv = [sys.argv[0], *quote_depth(args)]
    unknown = unknown_option(sys.argv[1:])
    if unknown:  # before Hydra, which would print every option and its search path
        print(f"flowsweep: error: {unknown}", file=sys.stderr, flush=True)
        return 2
    code = 0
    try:
        with dropping_hydra_job_lines():  # the sweep report names each failed job once
            main()
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (flowsweep.app.interrupt.Terminated)
        code = exit_code()
    except SystemExit as stop:  # Hydra's and flowsweep's own error exits
        code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
    # Also where a library turned the KeyboardInterrupt into an error of its own.
    if code in (130, 143) or interrupted():
        what = "terminated (SIGTERM)" if terminated() else "interrupted"
        print(f"flowsweep: {what}; the running job's MLflow runs ended KILLED", file=sys.stderr, flush=True)
        code = exit_code()
    # A sweep's jobs may leave their last MLflow writes to the end (flowsweep.app.run).
    return finish(code)


if __name__ == "__main__":
    install()
    sys.exit(cli(sys.argv[1:]))
