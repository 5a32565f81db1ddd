"""flowsweep: coupling flows whose conditioning structure is searched.

``flowsweep.load(uri)`` and ``flowsweep.FlowDensity`` are the trained-density API
(:mod:`flowsweep.density`); they are imported on first use, so ``import flowsweep.x`` stays light.
"""

from typing import Any

__all__ = ["load", "FlowDensity"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        import flowsweep.density

        return getattr(flowsweep.density, name)
    raise AttributeError(f"module 'flowsweep' has no attribute {name!r}")
