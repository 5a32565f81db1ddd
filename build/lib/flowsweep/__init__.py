"""flowsweep: coupling flows whose conditioning structure is searched.

``flowsweep.load(uri)`` (:mod:`flowsweep.density`) and ``flowsweep.FlowDensity``
(:mod:`flowsweep.app.fit`) are the trained-density API; they are imported on first use, so
``import flowsweep.x`` stays light.
"""

from typing import Any

__all__ = ["load", "FlowDensity"]


def __getattr__(name: str) -> Any:
    if name == "load":
        from flowsweep.density import load

        return load
    if name == "FlowDensity":
        from flowsweep.app.fit import FlowDensity

        return FlowDensity
    raise AttributeError(f"module 'flowsweep' has no attribute {name!r}")
