"""flowsweep's single entry point: compose the config, run the job, return its metric.

    python main.py dataset=magic layout=opt depth=8
    python main.py -m dataset=yeast,sonar layout=parity,random depth=2

Ctrl-C stops a job or a whole sweep at once: the running job ends its MLflow runs
KILLED, no further job starts, and the exit status is 130 (128 + SIGINT), as a shell
reports for a command it interrupted.
"""

import sys

import hydra
from omegaconf import DictConfig

from flowsweep.config import register_schema
from flowsweep.overrides import quote_depth

register_schema()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    # Imported here: a mistyped override is reported before torch and MLflow load.
    from flowsweep.task import run_task

    return run_task(cfg)


if __name__ == "__main__":
    sys.argv = [sys.argv[0], *quote_depth(sys.argv[1:])]
    try:
        main()
    except KeyboardInterrupt:
        print("flowsweep: interrupted; the running job's MLflow runs ended KILLED", file=sys.stderr, flush=True)
        sys.exit(130)
