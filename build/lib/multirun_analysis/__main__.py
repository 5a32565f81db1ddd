"""Entry point of ``python -m multirun_analysis`` and the ``flowsweep-analysis`` script."""

import sys

from multirun_analysis.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
