"""Layouts: how a job's instances get their structures, one class per option of the ``layout`` group.

``conf/layout/<name>.yaml`` names its class with ``_target_`` and gives the class's
arguments (``name`` and any keys of its own); :func:`build_layout` builds it, as the
``search`` group builds an optimizer. Every layout keeps the one contract of
:class:`Layout`: its checks of the config, whether it reads the features' dependence, and
the structures it trains (known before any run exists, or searched while the job runs).
A new layout is one class and one YAML file (see docs/layouts.md).

It sits above the search (``layout=opt`` runs one) and below the record and the application.
"""

from flowsweep.layouts.base import Layout, LayoutJob, build_layout
from flowsweep.layouts.best_known import BestKnown
from flowsweep.layouts.fixed import FromDependence, Oracle, Parity, Random
from flowsweep.layouts.given import Given
from flowsweep.layouts.searched import Searched

__all__ = ["Layout", "LayoutJob", "build_layout", "Parity", "Random", "FromDependence", "Oracle", "Given", "Searched",
           "BestKnown"]
