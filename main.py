"""flowsweep's single entry point: compose the config, run the job, return its metric.

    python main.py dataset=magic layout=opt depth=8
    python main.py -m dataset=yeast,sonar layout=parity,random depth=2

Ctrl-C stops a job or a whole sweep at once: the running job ends its MLflow runs
KILLED, no further job starts, and the exit status is 130 (128 + SIGINT), as a shell
reports for a command it interrupted. Before exiting, main.py waits for the MLflow writes
a sweep's jobs left pending, so that everything they logged is in the store.
"""

import sys

import hydra
from omegaconf import DictConfig

from flowsweep.config import register_schema
from flowsweep.app.interrupt import install, interrupted
from flowsweep.config.overrides import quote_depth
from flowsweep.app.task import finish, run_task  # torch and MLflow load once a job runs

register_schema()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    return run_task(cfg)


if __name__ == "__main__":
    sys.argv = [sys.argv[0], *quote_depth(sys.argv[1:])]
    code = 0
    install()
    try:
        main()
    except KeyboardInterrupt:
        code = 130
    except SystemExit as stop:  # Hydra's and flowsweep's own error exits
        code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
    # Also where a library turned the KeyboardInterrupt into an error of its own.
    if code == 130 or interrupted():
        print("flowsweep: interrupted; the running job's MLflow runs ended KILLED", file=sys.stderr, flush=True)
        code = 130
    # A sweep's jobs may leave their last MLflow writes to the end (flowsweep.app.run).
    sys.exit(finish(code))
