"""The inputs the layers are compared on.

Cases: random inputs, 4-D bottoms, a near-tie for the maximum (two distances 1e-3 apart,
compared in full), an exact tie (distinct pairs at exactly the same distance), duplicated
instances, zero rows, all-identical instances (normalizer 0: outputs and gradients must be
0), large magnitudes (x 1e3 with a 1e4 offset) and a large common offset (x + 1e3, where the
Gram formula cancels badly), N = 1 and N = 2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Case:
    """Bottoms (float32, what Caffe gets; the references see the same values in double)."""

    name: str
    bottoms: tuple[np.ndarray, ...]


def _f32(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    return tuple(np.ascontiguousarray(a, dtype=np.float32) for a in arrays)


def _blob(x: np.ndarray) -> np.ndarray:
    """(N, C) -> (N, C, 1, 1), the pooled-feature shape the authors' nets use."""
    return x.reshape(x.shape + (1, 1)) if x.ndim == 2 else x


def map_cases(rng: np.random.Generator) -> list[Case]:
    """Inputs for BatchEuclideanMap, ordinary and hard."""
    n, c = 6, 5
    x = rng.standard_normal((n, c))
    near = 0.1 * rng.standard_normal((n, 4))
    near[0], near[1] = [1, 0, 0, 0], [-1, 0, 0, 0]  # d01 = 4
    g = math.sqrt(1 + 1e-3)
    near[2], near[3] = [0, g, 0, 0], [0, -g, 0, 0]  # d23 = 4 (1 + 1e-3)
    tie = np.zeros((n, 4))
    tie[:4] = [[1, 0, 0, 0], [-1, 0, 0, 0], [0, 1, 0, 0], [0, -1, 0, 0]]  # d01 = d23 = 4
    tie[4:] = rng.integers(-2, 3, size=(2, 4)) / 8.0  # exact in float, well inside
    dup = x.copy()
    dup[3], dup[5] = dup[1], dup[0]
    zero_rows = x.copy()
    zero_rows[[2, 4]] = 0
    return [
        Case("random", _f32(_blob(x))),
        Case("4d", _f32(rng.standard_normal((5, 2, 3, 2)))),
        Case("near_tie", _f32(_blob(near))),
        Case("exact_tie", _f32(_blob(tie))),
        Case("duplicates", _f32(_blob(dup))),
        Case("zero_rows", _f32(_blob(zero_rows))),
        Case("all_zero", _f32(np.zeros((5, 4, 1, 1)))),
        Case("identical", _f32(np.tile(x[:1], (4, 1)).reshape(4, c, 1, 1))),
        Case("large", _f32(_blob(x * 1e3 + 1e4))),
        Case("offset", _f32(_blob(x + 1e3))),
        Case("n1", _f32(_blob(x[:1]))),
        Case("n2", _f32(_blob(x[:2]))),
    ]


def vector_cases(rng: np.random.Generator) -> list[Case]:
    """Inputs (x, y) for BatchEuclideanVector, ordinary and hard."""
    n, c = 6, 5
    x, y = rng.standard_normal((n, c)), rng.standard_normal((n, c))
    base = rng.integers(-4, 5, size=(n, 4)) / 4.0  # exact in float
    near_diff = 0.1 * rng.standard_normal((n, 4))
    near_diff[0], near_diff[1] = [2, 0, 0, 0], [0, 2 * math.sqrt(1 + 1e-3), 0, 0]
    tie_diff = rng.integers(-2, 3, size=(n, 4)) / 8.0
    tie_diff[0], tie_diff[1], tie_diff[2] = [2, 0, 0, 0], [0, -2, 0, 0], [0, 0, 2, 0]
    dup = x.copy()
    dup[[1, 4]] = y[[1, 4]]
    zx, zy = x.copy(), y.copy()
    zx[[0, 3]], zy[[0, 2]] = 0, 0
    return [
        Case("random", _f32(_blob(x), _blob(y))),
        Case("4d", _f32(rng.standard_normal((5, 2, 3, 2)), rng.standard_normal((5, 2, 3, 2)))),
        Case("near_tie", _f32(_blob(base + near_diff), _blob(base))),
        Case("exact_tie", _f32(_blob(base + tie_diff), _blob(base))),
        Case("duplicates", _f32(_blob(dup), _blob(y))),
        Case("zero_rows", _f32(_blob(zx), _blob(zy))),
        Case("all_zero", _f32(np.zeros((5, 4, 1, 1)), np.zeros((5, 4, 1, 1)))),
        Case("identical", _f32(_blob(x), _blob(x))),
        Case("large", _f32(_blob(x * 1e3 + 1e4), _blob(y * 1e3 + 1e4))),
        Case("offset", _f32(_blob(x + 1e3), _blob(y + 1e3))),
        Case("n1", _f32(_blob(x[:1]), _blob(y[:1]))),
        Case("n2", _f32(_blob(x[:2]), _blob(y[:2]))),
    ]


CASE_NAMES = tuple(c.name for c in map_cases(np.random.default_rng(0)))
