"""``python -m flowsweep score|sample``: use a trained density (:mod:`flowsweep.density.cli`)."""

import sys

from flowsweep.density.cli import main

__all__: list[str] = []

if __name__ == "__main__":
    sys.exit(main())
