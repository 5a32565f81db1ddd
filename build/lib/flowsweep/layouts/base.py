"""The contract every layout keeps, and building one from the ``layout`` node."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

from omegaconf import DictConfig

from flowsweep.config import ConfigError
from flowsweep.config.compose import build
from flowsweep.data import Dataset
from flowsweep.structure import Structure
from flowsweep.structure.dependence import Dependence

__all__ = ["Layout", "LayoutJob", "build_layout"]


@dataclass(frozen=True)
class LayoutJob:
    """What a layout may read to choose a job's structures."""

    #: The composed config of the job (a layout reads ``depth``, ``search``, ``dependence`` ...).
    cfg: DictConfig
    #: The job's data, preprocessed: ``data.d`` features, ``data.graph`` where edges are planted.
    data: Dataset
    #: Conditioning features per coupling, resolved against the data.
    m: int
    #: One seed per model instance.
    seeds: list[int]
    #: The job's tracking store (a layout may read an earlier run's artifacts from it).
    tracking_uri: str
    #: The features' estimated dependence where :meth:`Layout.uses_dependence` asked for it.
    dependence: Optional[Dependence] = None

    @property
    def depth(self) -> int:
        """Number of coupling layers ``L``."""
        return int(self.cfg.depth.layers)


@dataclass
class Layout(ABC):
    """How a job's instances get their structures.

    Subclasses are dataclasses whose fields are the keys of their YAML file (``name`` first).
    """

    #: The option's name, as runs, params and tables name the layout.
    name: str

    #: The job searches for its structures: the ``search`` group is read, logged and named
    #: in its runs, and :meth:`structures` returns ``None``.
    searches: ClassVar[bool] = False
    #: The structures come from outside the config (a file, a run): the job's fingerprint
    #: covers the structure itself, so an edited file is a new job.
    given: ClassVar[bool] = False

    def check(self, cfg: DictConfig) -> None:  # noqa: B027 (a hook: most layouts have nothing to check)
        """Check what the config alone decides, before any data is read (:class:`ConfigError`)."""

    def uses_dependence(self, cfg: DictConfig, d: int, m: int) -> bool:
        """Whether the job should estimate the features' dependence for this layout (it may check more)."""
        return False

    @abstractmethod
    def structures(self, job: LayoutJob) -> Optional[list[Structure]]:
        """One structure per seed of ``job``, before any run of the job exists; ``None`` where
        the job searches for them (:attr:`searches`). A bad input is a :class:`ConfigError`."""


def build_layout(node: Any) -> Layout:
    """The layout of a job's ``layout`` node (``_target_`` and its keys)."""
    layout = build(node, "layout", "layout")
    if not isinstance(layout, Layout):
        raise ConfigError("layout._target_", f"{type(layout).__name__} is not a flowsweep.layouts.Layout")
    return layout
