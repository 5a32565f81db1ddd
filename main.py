"""flowsweep's single entry point: compose the config, run the job, return its metric.

    python main.py dataset=magic layout=opt depth=8
    python main.py -m dataset=yeast,sonar layout=parity,random depth=2
"""

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from flowsweep.config import ConfigError, register_schema
from flowsweep.data import DataError
from flowsweep.overrides import quote_depth
from flowsweep.run import run_job

register_schema()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    try:
        return run_job(cfg)
    except (ConfigError, DataError) as error:
        # Bad input is the user's to fix, not a bug: one line, no traceback. In a
        # multirun the error goes back to Hydra so the other jobs still run.
        if HydraConfig.get().mode == RunMode.RUN:
            print(f"flowsweep: error: {error}", file=sys.stderr)
            sys.exit(2)
        raise


if __name__ == "__main__":
    sys.argv = [sys.argv[0], *quote_depth(sys.argv[1:])]
    main()
