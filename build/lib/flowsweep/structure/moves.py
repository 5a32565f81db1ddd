"""Moves between structures: whole-layer changes a pairwise dependence measure cannot rank.

Two builders, for two searches: :func:`whole_layer_changes` gives the default search's field
(:class:`~flowsweep.search.halving.Halving`) its entrants beside the dependence structure,
by kind; :func:`neighbour_moves` gives the long hill-climb of ``python -m flowsweep.bench
best-known`` its neighbours, whole-layer and single swaps.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from flowsweep.structure.masks import Structure

__all__ = ["balanced", "whole_layer_changes", "neighbour_moves"]


def balanced(d: int, m: int, layers: Iterable[Iterable[int]]) -> Structure | None:
    """The structure of ``layers`` (sorted, deduplicated), or ``None`` where a layer does not hold ``m`` features."""
    out = tuple(tuple(sorted(set(layer))) for layer in layers)
    return Structure(d, m, out) if all(len(layer) == m for layer in out) else None


def whole_layer_changes(start: Structure) -> tuple[list[Structure], ...]:
    """Whole-layer changes of ``start`` that a pairwise dependence cannot rank, by kind: each
    layer's split in every layer (a parent that must condition its child in every layer, as a
    scale that is a non-monotone function of it needs); each layer with its sides flipped (where
    ``d = 2m``, so the other side is a split too); the layers reversed, and rotated by one to
    ``depth - 1`` places."""
    layers, depth = start.conditioning, start.depth

    def of(conditioning) -> Structure:
        return Structure(start.d, start.m, tuple(conditioning))

    repeats = [of([layers[l]] * depth) for l in range(depth)]
    flips = []
    if start.d == 2 * start.m:
        flips = [of([start.transformed(k) if k == l else layers[k] for k in range(depth)]) for l in range(depth)]
    orders = [of(reversed(layers))] + [of(layers[r:] + layers[:r]) for r in range(1, depth)]
    return repeats, flips, orders


def neighbour_moves(structure: Structure, rng: np.random.Generator, swaps: int) -> list[Structure]:
    """The hill-climb's neighbours of ``structure`` (``flowsweep.bench best-known``): each layer
    repeated over a neighbouring one, neighbouring layers swapped, a layer's sides flipped (where
    ``d = 2m``), and ``swaps`` random single swaps of a conditioning and a transformed feature."""
    c, d, m = list(structure.conditioning), structure.d, structure.m
    out = []
    for l in range(len(c)):
        for other in (l - 1, l + 1):
            if 0 <= other < len(c):
                out.append(c[:other] + [c[l]] + c[other + 1:])  # layer l repeated over its neighbour
        if l + 1 < len(c):
            out.append(c[:l] + [c[l + 1], c[l]] + c[l + 2:])
        if d - m == m:
            out.append(c[:l] + [tuple(i for i in range(d) if i not in c[l])] + c[l + 1:])
    for _ in range(swaps):
        l = int(rng.integers(len(c)))
        inside, outside = list(c[l]), [i for i in range(d) if i not in c[l]]
        inside[int(rng.integers(m))] = outside[int(rng.integers(len(outside)))]
        out.append(c[:l] + [tuple(inside)] + c[l + 1:])
    return [s for s in (balanced(d, m, layers) for layers in out) if s is not None and s != structure]
