"""The Hydra task behind ``main.py``: run one job; bad input becomes one line on stderr.

The config's values and the data are checked before MLflow and the training code
load, so bad input is reported within a second or two and creates nothing. In a
single run, a :class:`~flowsweep.config.ConfigError` or
:class:`~flowsweep.data.DataError` is the user's to fix, not a bug: it prints
``flowsweep: error: <key or file>: <what is wrong>`` and exits 2, without a traceback.
In a multirun such an error (and a dead MLflow writer) goes back to Hydra as a
:class:`~flowsweep.app.callbacks.JobFailed` carrying its one line (Hydra prints that
line instead of a traceback), so the other jobs still run and
:class:`~flowsweep.app.callbacks.SweepReport` lists each failed job at the end. Launchers
that run jobs in other processes (joblib, submitit) pickle the error on its way back; any
other exception (a bug: its traceback stays) that cannot be pickled would break the
whole sweep, so it is replaced by a :class:`RuntimeError` carrying its text.
"""

from __future__ import annotations

import pickle
import sys
from typing import NoReturn

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from flowsweep.app.callbacks import JobFailed, fail
from flowsweep.config.checks import validate
from flowsweep.config import ConfigError
from flowsweep.app.interrupt import interrupted

__all__ = ["run_task", "finish"]


def _in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _picklable(error: Exception) -> Exception:
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")


def _bad_input(error: Exception) -> NoReturn:
    if _in_multirun():
        raise JobFailed.of(error) from error
    fail(error)


def run_task(cfg: DictConfig) -> float:
    """Run the job of ``cfg``; returns its mean validation bpd (what Hydra sweepers optimise, see run.objective)."""
    if interrupted():  # Ctrl-C came while the launcher prepared this job, and became some other error there
        raise KeyboardInterrupt
    # The checks of the config, then of the data, come before MLflow and the training
    # code load: bad input is reported in a second or two and creates nothing.
    try:
        validate(cfg)
    except ConfigError as error:
        _bad_input(error)
    from flowsweep.app.plan import plan_job
    from flowsweep.data import DataError

    try:
        plan = plan_job(cfg, validated=True)  # the layout, the store, the data: checked once
    except (ConfigError, DataError) as error:
        _bad_input(error)
    from flowsweep.app.run import run_job

    try:
        return run_job(plan)
    except (ConfigError, DataError) as error:
        _bad_input(error)
    except Exception as error:
        from flowsweep.record.mlflow_writer import MlflowWriteError

        if isinstance(error, MlflowWriteError) and not _in_multirun():
            # The writer process died (killed, out of memory): the job ended its runs itself.
            fail(RuntimeError(f"{error}; the job's runs ended FAILED"), code=1)
        if isinstance(error, MlflowWriteError):
            raise JobFailed.of(error) from error
        # Anything else is a bug: its traceback stays (made picklable for launchers of other processes).
        safe = _picklable(error) if _in_multirun() else error
        if safe is error:
            raise
        raise safe from error


def finish(code: int) -> int:
    """The exit status, once the MLflow writes that a sweep's jobs left pending are done.

    A write that failed (its runs ended FAILED) is one line on stderr and a non-zero status.
    """
    writer = sys.modules.get("flowsweep.record.mlflow_writer")  # not loaded: no job ran, nothing to wait for
    errors = writer.settle() if writer is not None else []
    for error in errors:
        print(f"flowsweep: error: MLflow could not write run {error}; its runs ended FAILED", file=sys.stderr,
              flush=True)
    return code or (1 if errors else 0)
