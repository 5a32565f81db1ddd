"""Names the record shares across processes and modules (environment variables, tags).

A leaf module without imports, so the Hydra callbacks can read it without loading MLflow.
"""

from __future__ import annotations

__all__ = ["SWEEP_ID_ENV"]

#: Set by :class:`~flowsweep.app.callbacks.TrackingCallback` in the launching process; jobs (and
#: their workers) inherit it, so every run of one sweep carries one sweep id.
SWEEP_ID_ENV = "FLOWSWEEP_SWEEP_ID"
