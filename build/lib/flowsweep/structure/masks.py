"""Conditional structures of coupling flows.

A :class:`Structure` says, for each of the ``L`` couplings of a flow over ``d``
features, which ``m`` features condition the transformation of the other ``d - m``.
It is a small immutable value: built by :func:`parity_structure` or
:func:`random_structure`, checked on construction, and serialised to the JSON form
logged as ``masks.json``::

    {"d": 10, "m": 5, "conditioning": [[0, 2, 4, 6, 8], [1, 3, 5, 7, 9], ...]}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

__all__ = [
    "MASKS_ARTIFACT",
    "Structure",
    "StructureError",
    "parity_structure",
    "random_structure",
    "reshuffle_layers",
]


#: The file (and MLflow artifact) every run logs its structure as, in :meth:`Structure.to_dict`'s form.
MASKS_ARTIFACT = "masks.json"


class StructureError(ValueError):
    """A structure violates its invariants."""


@dataclass(frozen=True)
class Structure:
    """Conditioning features of every coupling layer.

    Attributes:
        d: Number of features.
        m: Number of conditioning features per layer, ``1 <= m <= d - 1``.
        conditioning: ``L`` sorted tuples of ``m`` distinct feature indices in ``[0, d)``.
    """

    d: int
    m: int
    conditioning: tuple[tuple[int, ...], ...]

    def __post_init__(self) -> None:
        d, m = int(self.d), int(self.m)
        if d < 2:
            raise StructureError(f"d must be >= 2, got {d}")
        if not 1 <= m <= d - 1:
            raise StructureError(f"m must be in 1..{d - 1}, got {m}")
        layers = tuple(tuple(sorted(int(i) for i in layer)) for layer in self.conditioning)
        if not layers:
            raise StructureError("a structure needs at least one layer")
        for l, layer in enumerate(layers):
            if len(layer) != m or len(set(layer)) != m:
                raise StructureError(f"layer {l}: needs exactly {m} distinct indices, got {list(layer)}")
            if layer[0] < 0 or layer[-1] >= d:
                raise StructureError(f"layer {l}: indices must lie in [0, {d}), got {list(layer)}")
        object.__setattr__(self, "d", d)
        object.__setattr__(self, "m", m)
        object.__setattr__(self, "conditioning", layers)

    @property
    def depth(self) -> int:
        """Number of coupling layers ``L``."""
        return len(self.conditioning)

    def transformed(self, layer: int) -> tuple[int, ...]:
        """The ``d - m`` sorted features that layer ``layer`` transforms."""
        cond = set(self.conditioning[layer])
        return tuple(i for i in range(self.d) if i not in cond)

    def permutation(self) -> np.ndarray:
        """Per layer, conditioning indices first, then transformed ones: int64 ``[L, d]``."""
        return np.array(
            [list(self.conditioning[l]) + list(self.transformed(l)) for l in range(self.depth)],
            dtype=np.int64,
        )

    def mask(self) -> np.ndarray:
        """Boolean ``[L, d]``: ``True`` where the feature conditions the layer."""
        out = np.zeros((self.depth, self.d), dtype=bool)
        for l, layer in enumerate(self.conditioning):
            out[l, list(layer)] = True
        return out

    def pair_coverage(self) -> float:
        """Share of ordered pairs ``(i, j), i != j``, where ``j`` conditions ``i`` in some layer."""
        covered = np.zeros((self.d, self.d), dtype=bool)
        for l, layer in enumerate(self.conditioning):
            covered[np.ix_(list(self.transformed(l)), list(layer))] = True
        return float(covered.sum() / (self.d * (self.d - 1)))

    def changed_layers(self, other: Structure) -> list[int]:
        """Indices of the layers whose conditioning differs from ``other``'s."""
        if other.depth != self.depth:
            raise StructureError(f"depths differ: {self.depth} vs {other.depth}")
        return [l for l in range(self.depth) if self.conditioning[l] != other.conditioning[l]]

    def to_dict(self) -> dict[str, Any]:
        """The ``masks.json`` form: ``{"d": .., "m": .., "conditioning": [[..], ..]}``."""
        return {"d": self.d, "m": self.m, "conditioning": [list(layer) for layer in self.conditioning]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: Any) -> Structure:
        """The structure of a ``masks.json`` object; :class:`StructureError` saying what is wrong.

        Strict types: JSON's ``4.0`` or ``true`` does not pass for an index."""
        if not isinstance(data, dict) or not {"d", "m", "conditioning"} <= set(data):
            raise StructureError('not a structure: expected an object with keys "d", "m" and "conditioning"')
        if not (_is_int(data["d"]) and _is_int(data["m"])):
            raise StructureError(f'"d" and "m" must be integers, got {data["d"]!r} and {data["m"]!r}')
        layers = data["conditioning"]
        if not isinstance(layers, list) or not all(isinstance(l, list) and all(map(_is_int, l)) for l in layers):
            raise StructureError('"conditioning" must be a list of lists of feature indices')
        return cls(d=data["d"], m=data["m"], conditioning=tuple(tuple(layer) for layer in layers))

    @classmethod
    def from_json(cls, text: str) -> Structure:
        """The structure in ``masks.json`` text (:meth:`from_dict`); not JSON is a :class:`StructureError`."""
        try:
            data = json.loads(text)
        except ValueError as error:
            raise StructureError(f"not JSON ({error})") from None
        return cls.from_dict(data)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parity_structure(d: int, m: int, depth: int) -> Structure:
    """Index-parity masks: even features condition layer 1, odd ones layer 2, and so on.

    Where a parity class holds more than ``m`` features its first ``m`` condition;
    where it holds fewer, the lowest features of the other class fill up.
    """
    layers = []
    for l in range(depth):
        same = [i for i in range(d) if i % 2 == l % 2]
        other = [i for i in range(d) if i % 2 != l % 2]
        layers.append(tuple((same + other)[:m]))
    return Structure(d, m, tuple(layers))


def random_structure(d: int, m: int, depth: int, rng: np.random.Generator) -> Structure:
    """Each layer an independent uniformly random ``m``-subset of the ``d`` features."""
    return Structure(d, m, tuple(tuple(rng.choice(d, size=m, replace=False)) for _ in range(depth)))


def reshuffle_layers(structure: Structure, layers: Sequence[int], rng: np.random.Generator) -> Structure:
    """Shuffle the mask of each listed layer: a fresh random ``m``-subset, the others kept."""
    chosen = set(layers)
    new = tuple(
        tuple(rng.choice(structure.d, size=structure.m, replace=False)) if l in chosen else layer
        for l, layer in enumerate(structure.conditioning)
    )
    return Structure(structure.d, structure.m, new)
