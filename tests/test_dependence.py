"""The features' estimated dependence and the masks built from it."""

from __future__ import annotations

import numpy as np
import pytest

from flowsweep.structure.dependence import Dependence, affine_gain, covered_weight, dependence_matrix, dependence_structure


def pairs(n: int = 4000, seed: int = 0) -> np.ndarray:
    """x1 = sin(2 x0) + noise (a mean set by x0), x3 = exp(x2) noise (a scale set by x2), x4 alone."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 5))
    x[:, 1] = np.sin(2 * x[:, 0]) + 0.2 * rng.normal(size=n)
    x[:, 3] = np.exp(x[:, 2]) * rng.normal(size=n)
    return x


def test_affine_gain_sees_means_and_scales_and_knows_the_direction():
    gain = affine_gain(pairs())
    assert gain[0, 1] > 0.8 and gain[2, 3] > 0.3  # mean and scale set by the parent
    assert gain[0, 1] > 2 * gain[1, 0] and gain[2, 3] > gain[3, 2]  # the parent tells more about the child
    independent = [gain[i, j] for i in range(5) for j in range(5) if i != j and {i, j} not in ({0, 1}, {2, 3})]
    assert max(independent) < 0.02  # small-sample bias removed
    assert (np.diag(gain) == 0).all() and (gain >= 0).all()


def test_mutual_information_is_symmetric_and_finds_the_pairs():
    mi = dependence_matrix(pairs(), "mi", rows=1500)
    np.testing.assert_allclose(mi, mi.T)
    top = sorted(((mi[i, j], (i, j)) for i in range(5) for j in range(i + 1, 5)), reverse=True)[:2]
    assert {pair for _, pair in top} == {(0, 1), (2, 3)}


def test_a_binary_feature_conditions_through_its_values():
    rng = np.random.default_rng(1)
    flag = rng.integers(0, 2, size=3000).astype(float)
    x = np.stack([flag, flag * 3 + rng.normal(size=3000), rng.normal(size=3000)], 1)
    gain = affine_gain(x)
    assert gain[0, 1] > 0.5 and gain[0, 2] < 0.02


def test_the_structure_covers_the_strongest_pairs_in_their_direction():
    weight = affine_gain(pairs())
    structure = dependence_structure(weight, 2, 4, discount=0.5)
    first = np.zeros(5, dtype=bool)
    first[list(structure.conditioning[0])] = True
    assert set(structure.conditioning[0]) == {0, 2}  # both parents condition both children
    best = max(covered_weight(c, weight) for c in _all_splits(5, 2))
    assert covered_weight(first, weight) == pytest.approx(best)
    assert dependence_structure(weight, 2, 4, seed=3) == Dependence(weight).structure(2, 4, 3)


def _all_splits(d: int, m: int):
    from itertools import combinations

    for chosen in combinations(range(d), m):
        mask = np.zeros(d, dtype=bool)
        mask[list(chosen)] = True
        yield mask
