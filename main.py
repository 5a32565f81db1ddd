"""flowsweep's single entry point: compose the config, run the job, return its metric.

    python main.py dataset=magic layout=opt depth=8
    python main.py -m dataset=yeast,sonar layout=parity,random depth=2
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
    main()
