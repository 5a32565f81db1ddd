"""Synthetic tables with a planted dependency structure, for judging structures and searches.

A table of ``d`` features is built from *components*, each a few features with known
dependencies (``N`` a standard normal, ``g = gain``, ``s = noise``):

======== ======== =====================================================================
kind     features planted edges
======== ======== =====================================================================
pair     2        ``p ~ N``, ``c = tanh(g p) + s N``: a smooth nonlinear pair, p → c
hetero   2        ``p ~ N``, ``c = exp(amplitude tanh(p)) N``: p sets c's scale, no linear
                  correlation (``E[c | p] = 0``), p → c
tree     4        ``a, b ~ N``, ``c = tanh(g a) + tanh(g b) + s N``, ``e = tanh(g c) + s N``:
                  two parents and a chain, a → c, b → c, c → e
bump     2        ``p ~ N``, ``c = exp(amplitude (tanh²(g (p - 1/2)) - 1/2)) N``: p sets c's
                  scale through a non-monotone function, p → c
bimodal  2        ``p ~ N``, ``c = B (1/2 + tanh²(g (p - 1/2))) + s N``, ``B = ±1`` a fair
                  coin: two modes whose distance is a non-monotone function of p, p → c
wave     2        ``p ~ N``, ``c = sin(g p) + s N``: a non-monotone mean, p → c
======== ======== =====================================================================

and ``distractors`` independent Student-t features (``dof`` degrees of freedom, heavy
tails, no edges). A family fixes the kinds: ``pairs``, ``hetero`` and ``tree`` repeat
their kind, ``mixed`` cycles pair, hetero, tree; components are added while they fit
beside the distractors, and features left over become distractors too. The families
``scale`` (bump, bimodal) and ``wave`` (wave) are where the dependence layout, which
alternates which side of an edge conditions, is not the best structure: a tanh
conditioner's scale and shift are monotone in its inputs, so a non-monotone function of
the parent takes several stacked layers in which the parent conditions its child. (The
bend sits off ``p = 0``, at ``p = 1/2``: an even function of a symmetric parent would give
a zero gradient at the identity flow that training starts from, a saddle it rarely leaves.)

The *placement* maps the components to feature indices. ``adverse`` puts every
component on indices of one parity, so index-parity masks (with ``m = floor(d/2)``) never
let a parent condition its child; ``friendly`` puts parents and children on indices of
opposite parity, so parity masks of two or more layers cover every edge; ``shuffled`` is a
seeded random permutation. The planted edges, as feature indices, are the dataset's
``graph``; :func:`flowsweep.structure.graph.oracle_structure` turns them into a structure::

    python -m flowsweep.data.synthetic oracle dataset=synthetic_pairs depth=4 > oracle.json

Every feature has its own random stream per split, keyed by the seed: the same config
gives the same rows, and ``n_test`` does not change the training rows.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from flowsweep.seeding import SyntheticStream
from flowsweep.structure.graph import Graph, oracle_structure
from .sources import DataError

__all__ = ["FAMILIES", "PLACEMENTS", "Planted", "plan", "generate", "main"]

#: Components of each family, cycled while they fit.
_FAMILY_KINDS = {"pairs": ("pair",), "hetero": ("hetero",), "tree": ("tree",), "mixed": ("pair", "hetero", "tree"),
                 "scale": ("bump", "bimodal"), "wave": ("wave",)}
FAMILIES = tuple(_FAMILY_KINDS)
PLACEMENTS = ("adverse", "friendly", "shuffled")
#: Per kind: the depth of each of its features and its edges, in positions within the component.
_SHAPES: dict[str, tuple[tuple[int, ...], tuple[tuple[int, int], ...]]] = {
    "pair": ((0, 1), ((0, 1),)),
    "hetero": ((0, 1), ((0, 1),)),
    "tree": ((0, 0, 1, 2), ((0, 2), (1, 2), (2, 3))),
    "bump": ((0, 1), ((0, 1),)),
    "bimodal": ((0, 1), ((0, 1),)),
    "wave": ((0, 1), ((0, 1),)),
    "distractor": ((0,), ()),
}
#: Stream keys under the seed (a feature's stream adds its position in the plan).
_KEYS = ("family", "d", "n_train", "n_test", "placement", "seed", "distractors", "noise", "gain", "amplitude", "dof")


@dataclass(frozen=True)
class Planted:
    """Where each component of a synthetic table sits.

    ``components`` lists ``(kind, features)``: the feature indices of each component,
    parents first as in the module's table; ``graph`` holds the planted edges as
    ``(parent, child)`` feature indices.
    """

    d: int
    components: tuple[tuple[str, tuple[int, ...]], ...]
    graph: Graph


def _spec(synthetic: Mapping[str, Any]) -> dict[str, Any]:
    missing = [k for k in _KEYS if synthetic.get(k) in (None, "???")]
    if missing:
        raise DataError(f"dataset.synthetic: keys {missing} are not set; start from dataset=synthetic_pairs.")
    spec = {k: synthetic[k] for k in _KEYS}
    if spec["family"] not in FAMILIES:
        raise DataError(f"dataset.synthetic.family: must be one of {FAMILIES}, got {spec['family']!r}")
    if spec["placement"] not in PLACEMENTS:
        raise DataError(f"dataset.synthetic.placement: must be one of {PLACEMENTS}, got {spec['placement']!r}")
    for key, low in (("n_train", 2), ("n_test", 1), ("distractors", 0), ("noise", 0.0)):
        if not spec[key] >= low:
            raise DataError(f"dataset.synthetic.{key}: must be >= {low}, got {spec[key]}")
    if not spec["dof"] > 0:
        raise DataError(f"dataset.synthetic.dof: must be > 0, got {spec['dof']}")
    return spec


def _classes(depths: Sequence[int], placement: str, free: list[int]) -> list[Optional[int]]:
    """Index parity (0 even, 1 odd) of each feature of one component; ``None``: any index (shuffled)."""
    if placement == "shuffled":
        return [None] * len(depths)
    more = 0 if free[0] >= free[1] else 1
    if placement == "adverse":  # the whole component on one parity, where there is more room
        return [more] * len(depths)
    # friendly: opposite parities along every edge, the larger half where there is more room
    evens = sum(1 for k in depths if k % 2 == 0)
    larger = 0 if evens >= len(depths) - evens else 1
    return [(k + larger + more) % 2 for k in depths]


def _components(spec: Mapping[str, Any]) -> tuple[list[str], list[list[Optional[int]]]]:
    """Kinds and index parities of the components: the family's kinds, cycled while the next
    fits beside the distractors (and, for adverse and friendly, on its parities), then distractors."""
    d, placement, cycle = int(spec["d"]), str(spec["placement"]), _FAMILY_KINDS[spec["family"]]
    room = d - int(spec["distractors"])
    # Odd d keeps index d - 1 for a distractor: parity masks with m = floor(d/2) transform
    # it in both layer types, so a component there would break either placement's promise.
    free = [d // 2, d // 2]
    kinds: list[str] = []
    classes: list[list[Optional[int]]] = []
    while True:
        kind = cycle[len(kinds) % len(cycle)]
        depths = _SHAPES[kind][0]
        parities = _classes(depths, placement, free)
        if len(depths) > room or any(parities.count(c) > free[c] for c in (0, 1)):
            break
        kinds.append(kind)
        classes.append(parities)
        room -= len(depths)
        for c in parities:
            if c is not None:
                free[c] -= 1
    if not kinds:
        raise DataError(f"dataset.synthetic.d: d={d} leaves no room for a {cycle[0]} "
                        f"({len(_SHAPES[cycle[0]][0])} features) beside {spec['distractors']} distractors.")
    extra = d - sum(len(_SHAPES[k][0]) for k in kinds)
    return kinds + ["distractor"] * extra, classes + [[None]] * extra


def plan(synthetic: Mapping[str, Any]) -> Planted:
    """The components and planted edges that the ``dataset.synthetic`` config describes (no sampling)."""
    spec = _spec(synthetic)
    d = int(spec["d"])
    kinds, classes = _components(spec)
    rng = np.random.default_rng([int(spec["seed"]), SyntheticStream.PLACEMENT])
    # Seeded order within each parity, so that components are not neighbours by index.
    slots = [[int(i) for i in rng.permutation(range(0, d - d % 2, 2))],
             [int(i) for i in rng.permutation(range(1, d, 2))]]
    anywhere = [int(i) for i in rng.permutation(d)] if spec["placement"] == "shuffled" else []
    positions = []
    for parities in classes:
        positions.append([slots[c].pop() if c is not None else -1 for c in parities])
    # Distractors take what is left; index d - 1 of an odd d is the first of those.
    rest = anywhere or [d - 1] * (d % 2) + slots[0] + slots[1]
    for row in positions:
        for i, position in enumerate(row):
            if position < 0:
                row[i] = rest.pop(0)
    graph = tuple(sorted((pos[p], pos[c]) for kind, pos in zip(kinds, positions) for p, c in _SHAPES[kind][1]))
    return Planted(d, tuple((k, tuple(p)) for k, p in zip(kinds, positions)), graph)


def _sample(kind: str, streams: Sequence[np.random.Generator], n: int, spec: Mapping[str, Any]) -> list[np.ndarray]:
    """``n`` rows of one component, a ``[n]`` float64 array per feature (parents first)."""
    g, s = float(spec["gain"]), float(spec["noise"])
    if kind == "distractor":
        return [streams[0].standard_t(float(spec["dof"]), n)]
    z = [rng.standard_normal(n) for rng in streams]
    if kind == "pair":
        return [z[0], np.tanh(g * z[0]) + s * z[1]]
    if kind == "hetero":
        return [z[0], np.exp(float(spec["amplitude"]) * np.tanh(z[0])) * z[1]]
    if kind == "bump":
        return [z[0], np.exp(float(spec["amplitude"]) * (np.tanh(g * (z[0] - 0.5)) ** 2 - 0.5)) * z[1]]
    if kind == "bimodal":
        # The coin comes from the child's own stream, after its normal draws.
        coin = np.where(streams[1].random(n) < 0.5, -1.0, 1.0)
        return [z[0], coin * (0.5 + np.tanh(g * (z[0] - 0.5)) ** 2) + s * z[1]]
    if kind == "wave":
        return [z[0], np.sin(g * z[0]) + s * z[1]]
    c = np.tanh(g * z[0]) + np.tanh(g * z[1]) + s * z[2]
    return [z[0], z[1], c, np.tanh(g * c) + s * z[3]]


def _rows(planted: Planted, spec: Mapping[str, Any], n: int, split_key: int) -> np.ndarray:
    """``[n, d]`` float64 rows; feature ``j`` of the plan draws from stream ``(seed, split, j)``."""
    x = np.empty((n, planted.d))
    feature = 0
    for kind, positions in planted.components:
        streams = [np.random.default_rng([int(spec["seed"]), split_key, feature + i]) for i in range(len(positions))]
        feature += len(positions)
        for index, values in zip(positions, _sample(kind, streams, n, spec)):
            x[:, index] = values
    return x


def generate(synthetic: Mapping[str, Any]) -> tuple[list[str], np.ndarray, np.ndarray, Graph]:
    """``(columns, train [n_train, d], test [n_test, d], graph)`` of the ``dataset.synthetic`` config.

    ``train`` holds every training row (the validation split is cut from it later);
    ``test`` rows are drawn independently of them.
    """
    planted = plan(synthetic)
    columns = [f"x{j}" for j in range(planted.d)]
    train = _rows(planted, synthetic, int(synthetic["n_train"]), SyntheticStream.TRAIN)
    test = _rows(planted, synthetic, int(synthetic["n_test"]), SyntheticStream.TEST)
    return columns, train, test, planted.graph


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m flowsweep.data.synthetic oracle OVERRIDES...``: the oracle's masks.json on stdout."""
    parser = argparse.ArgumentParser(
        prog="python -m flowsweep.data.synthetic",
        description="Write the oracle structure of a synthetic dataset in the masks.json format "
                    "(train it with layout=file layout.path=FILE).")
    parser.add_argument("command", choices=["oracle"])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for main.py (dataset=synthetic_pairs depth=4)")
    args = parser.parse_args(argv)
    # Imported here: loading a synthetic table needs neither Hydra nor torch.
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from flowsweep.config.compose import compose_config
    from flowsweep.config.overrides import quote_depth

    try:
        cfg = compose_config(quote_depth(args.overrides))
        if cfg.dataset.get("synthetic") is None:
            raise DataError(f"dataset {cfg.dataset.name} is not synthetic: it has no planted structure")
        planted = plan(OmegaConf.to_container(cfg.dataset.synthetic))
        m = planted.d // 2 if cfg.model.m is None else int(cfg.model.m)
        structure = oracle_structure(planted.graph, planted.d, m, int(cfg.depth.layers))
    except (DataError, ValueError, HydraException, OmegaConfBaseException) as error:
        print(f"flowsweep: error: {error}", file=sys.stderr)
        return 2
    print(structure.to_json())
    return 0


if __name__ == "__main__":
    sys.exit(main())
