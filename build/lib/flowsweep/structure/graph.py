"""Planted dependency graphs and the structures that can use them.

A *graph* is a tuple of ``(parent, child)`` feature-index pairs, a DAG: the child's
distribution depends on its parents (see :mod:`flowsweep.data.synthetic`). A coupling
layer lets ``parent`` condition ``child`` when the parent is among the layer's ``m``
conditioning features and the child among the ``d - m`` it transforms.

:func:`dependency_recall` measures how many planted pairs a structure covers this way;
:func:`oracle_structure` builds a structure that covers every one of them (given
enough layers): layer type ``k`` conditions the features at even (``k = 0``) or odd
(``k = 1``) depth of the DAG, so each parent→child edge between consecutive depths is
covered by the type of the parent's depth parity; edges that skip a depth get further
types, built greedily. The types are repeated in turn over the ``L`` layers.
"""

from __future__ import annotations

from typing import Sequence

from flowsweep.structure import Structure, StructureError

__all__ = ["Graph", "check_graph", "node_depths", "dependency_recall", "oracle_structure"]

#: ``(parent, child)`` pairs of feature indices.
Graph = tuple[tuple[int, int], ...]


def check_graph(graph: Sequence[tuple[int, int]], d: int) -> Graph:
    """``graph`` as a tuple of int pairs; :class:`StructureError` unless a non-empty DAG over ``[0, d)``."""
    edges = tuple((int(p), int(c)) for p, c in graph)
    if not edges:
        raise StructureError("the dependency graph has no edges")
    for p, c in edges:
        if not (0 <= p < d and 0 <= c < d) or p == c:
            raise StructureError(f"edge {(p, c)} is not a pair of distinct features in [0, {d})")
    node_depths(edges, d)  # raises on a cycle
    return edges


def node_depths(graph: Sequence[tuple[int, int]], d: int) -> list[int]:
    """Per feature ``[d]``, the length of the longest path into it (0 for roots and unplanted features)."""
    parents: dict[int, list[int]] = {}
    for p, c in graph:
        parents.setdefault(c, []).append(p)
    depth: dict[int, int] = {}

    def visit(node: int, path: frozenset[int]) -> int:
        if node in path:
            raise StructureError(f"the dependency graph has a cycle through feature {node}")
        if node not in depth:
            depth[node] = max((visit(p, path | {node}) + 1 for p in parents.get(node, ())), default=0)
        return depth[node]

    return [visit(i, frozenset()) for i in range(d)]


def dependency_recall(structure: Structure, graph: Sequence[tuple[int, int]]) -> float:
    """Share of the ``graph``'s pairs whose parent conditions the child in some layer of ``structure``."""
    edges = check_graph(graph, structure.d)
    conditioning = [set(layer) for layer in structure.conditioning]
    covered = sum(any(p in layer and c not in layer for layer in conditioning) for p, c in edges)
    return covered / len(edges)


def _layer_type(edges: list[tuple[int, int]], parity: int, depths: list[int], d: int, m: int) -> tuple[int, ...]:
    """One conditioning set of ``m`` features covering as many of ``edges`` (in order) as fit.

    An edge fits while its parent is not already transformed, its child not already
    conditioning, and neither side outgrows its size (``m`` and ``d - m``). The rest is
    filled with features of depth parity ``parity`` first, then by index.
    """
    cond: set[int] = set()
    transformed: set[int] = set()
    for p, c in edges:
        if p in transformed or c in cond:
            continue
        if len(cond | {p}) <= m and len(transformed | {c}) <= d - m:
            cond.add(p)
            transformed.add(c)
    free = sorted((i for i in range(d) if i not in cond and i not in transformed),
                  key=lambda i: (depths[i] % 2 != parity, i))
    cond.update(free[: m - len(cond)])
    return tuple(sorted(cond))


def oracle_structure(graph: Sequence[tuple[int, int]], d: int, m: int, depth: int) -> Structure:
    """``depth`` layers of ``m`` conditioning features that let every planted parent condition its child.

    Layer types: depth parity 0 (parents at even depth condition), depth parity 1, then
    as many greedy types as edges remain uncovered; layer ``l`` takes type ``l mod T``.
    With fewer layers than types some edges stay uncovered (see :func:`dependency_recall`).
    """
    edges = check_graph(graph, d)
    if not 1 <= m <= d - 1:
        raise StructureError(f"m must be in 1..{d - 1}, got {m}")
    depths = node_depths(edges, d)
    uncovered = list(edges)
    types: list[tuple[int, ...]] = []
    while uncovered or len(types) < 2:
        parity = len(types) % 2
        # The parity types try their own edges first; later types take any edge left.
        ordered = sorted(uncovered, key=lambda e: (len(types) < 2 and depths[e[0]] % 2 != parity, e))
        layer = _layer_type(ordered, parity, depths, d, m)
        chosen = set(layer)
        # Never stalls: the first edge left always fits a layer built from empty sets.
        uncovered = [(p, c) for p, c in uncovered if not (p in chosen and c not in chosen)]
        types.append(layer)
    return Structure(d, m, tuple(types[l % len(types)] for l in range(depth)))
