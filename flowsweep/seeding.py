"""Seeds derived from the job seed, so every model and trial has its own random stream.

A model's stream depends only on the job seed and its own keys (instance, trial), never
on how many other models share its batch: the reason batched runs equal runs alone.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["derive_seed", "torch_generator"]


def derive_seed(*keys: int) -> int:
    """A 63-bit seed from a tuple of non-negative integers (``numpy.random.SeedSequence``)."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


def torch_generator(seed: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``seed``."""
    return torch.Generator().manual_seed(seed)
