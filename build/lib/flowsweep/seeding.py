"""Seeds derived from the job seed, so every model and trial has its own random stream, and
every stream's key (fixed, so results never depend on code order).

A model's stream depends only on the job seed and its own keys (instance, trial), never
on how many other models share its batch: the reason batched runs equal runs alone.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np
import torch

__all__ = ["InstanceStream", "JobStream", "SplitStream", "SyntheticStream", "derive_seed", "torch_generator"]


class InstanceStream(IntEnum):
    """Stream keys under a model instance's seed (``derive_seed(instance_seed, key)``)."""

    #: The layout's draws (layout=random; the dependence layout's tie-breaks).
    LAYOUT = 1
    #: The instance's structure search.
    SEARCH = 2


class JobStream(IntEnum):
    """Stream keys under the job's ``seed``."""

    #: The rows the dependence estimate reads.
    DEPENDENCE = 3


class SplitStream(IntEnum):
    """Stream keys under ``dataset.split_seed``."""

    VALIDATION = 1
    DEQUANTIZE = 2


class SyntheticStream(IntEnum):
    """Stream keys under ``dataset.synthetic.seed``."""

    TRAIN = 0
    TEST = 1
    PLACEMENT = 2


def derive_seed(*keys: int) -> int:
    """A 63-bit seed from a tuple of non-negative integers (``numpy.random.SeedSequence``)."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


def torch_generator(seed: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``seed``."""
    return torch.Generator().manual_seed(seed)
