"""The NumPy float64 reference, written here from the formulas.

Independent of both the Caffe layers (GEMM formulation) and the PyTorch reference (direct
pairwise differences, autograd): the exact gradient is derived by hand (chain rule through
the normalizer ``m``), so agreement with the other two is evidence, not repetition.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pyirg.verify.modes import Mode


@dataclass
class Reference:
    """A NumPy result: output, bottom gradients, and what the tie-agnostic check needs.

    ``const`` is the gradient with ``m`` held constant (both halves of each pair for the
    map); ``ties`` holds, per group of tied maximal entries, ``dL/dm`` times that group's
    distance gradient, flattened like the concatenated bottom gradients; ``scale`` is the
    size of the terms the gradient sums, (with differences ``x_i - x_j``, with the
    instances themselves) for the relative-error floor (:mod:`pyirg.verify.rows`).
    """

    top: np.ndarray
    grads: list[np.ndarray]
    const: np.ndarray
    ties: list[np.ndarray]
    scale: tuple[float, float]


def _slope(d: np.ndarray, squared: bool) -> np.ndarray:
    """s with d(d)/d(x_a) = s (x_a - x_b): 2 for squared distances, 1/d (0 at d = 0) else."""
    if squared:
        return np.full_like(d, 2.0)
    return np.divide(1.0, d, out=np.zeros_like(d), where=d > 0)


def numpy_map(x: np.ndarray, g: np.ndarray, mode: Mode) -> Reference:
    """BatchEuclideanMap forward and backward in float64, from the formulas."""
    shape = x.shape
    x = x.reshape(shape[0], -1).astype(np.float64)
    n = x.shape[0]
    diff = x[:, None, :] - x[None, :, :]  # diff[i, j] = x_i - x_j
    q = np.einsum("ijk,ijk->ij", diff, diff)
    d = q if mode.squared else np.sqrt(q)
    off = 1.0 - np.eye(n)
    if mode.normalize == "MAX":
        m = float(d.max())
        dm_dd = (d == m) / np.count_nonzero(d == m)
    elif mode.normalize == "MEAN":
        m = float((d * off).sum() / (n * (n - 1))) if n > 1 else 0.0
        dm_dd = off / (n * (n - 1)) if n > 1 else off
    else:
        m, dm_dd = 1.0, np.zeros_like(d)
    zero = np.zeros(shape)
    if m == 0:
        return Reference(np.zeros((n, n)), [zero], zero.ravel(), [], (0.0, 0.0))
    s = _slope(d, mode.squared)
    dl_dm = -float((g * d).sum()) / m**2

    def grad_of(h: np.ndarray) -> np.ndarray:  # dL/dd_ij = h_ij -> dL/dx
        return np.einsum("ij,ijk->ik", h * s + (h * s).T, diff)

    norms = np.linalg.norm(x, axis=1)

    def size_of(h: np.ndarray) -> tuple[float, float]:
        w = np.abs(h * s) + np.abs(h * s).T
        terms = np.einsum("ij,ij->i", w, np.linalg.norm(diff, axis=2))
        return float(np.max(terms)), float(np.max(w @ norms + w.sum(1) * norms))

    if mode.backward == "RELEASED":
        h = g / m
        dx = np.einsum("ij,ijk->ik", h * s, diff)  # only the G_ij half of each pair
        return Reference(d / m, [dx.reshape(shape)], dx.ravel(), [], size_of(h))
    const = grad_of(g / m)
    ties = []
    if mode.normalize == "MAX":
        for k, j in zip(*np.nonzero(np.triu(d == m))):
            e = np.zeros_like(d)
            e[k, j] = dl_dm
            ties.append(grad_of(e).ravel())  # d_kl and d_lk are one function of x
    h = g / m + dl_dm * dm_dd
    dx = grad_of(h)
    scale = tuple(np.maximum(size_of(g / m), size_of(h)))
    return Reference(d / m, [dx.reshape(shape)], const.ravel(), ties, scale)


def numpy_vector(x: np.ndarray, y: np.ndarray, g: np.ndarray, mode: Mode) -> Reference:
    """BatchEuclideanVector forward and backward in float64, from the formulas."""
    shape = x.shape
    n = shape[0]
    diff = x.reshape(n, -1).astype(np.float64) - y.reshape(n, -1).astype(np.float64)
    q = np.einsum("ik,ik->i", diff, diff)
    d = q if mode.squared else np.sqrt(q)
    if mode.normalize == "MAX":
        m = float(d.max())
        dm_dd = (d == m) / np.count_nonzero(d == m)
    elif mode.normalize == "MEAN":
        m, dm_dd = float(d.mean()), np.full(n, 1.0 / n)
    else:
        m, dm_dd = 1.0, np.zeros(n)
    zero = np.zeros(shape)
    if m == 0:
        return Reference(np.zeros(n), [zero, zero], np.zeros(2 * zero.size), [], (0.0, 0.0))
    s = _slope(d, mode.squared)
    dl_dm = -float((g * d).sum()) / m**2

    def grads_of(h: np.ndarray) -> np.ndarray:  # dL/dd_i = h_i -> [dL/dx, dL/dy] flat
        dx = (h * s)[:, None] * diff
        return np.concatenate([dx.ravel(), -dx.ravel()])

    norms = np.linalg.norm(x.reshape(n, -1), axis=1) + np.linalg.norm(y.reshape(n, -1), axis=1)

    def size_of(h: np.ndarray) -> tuple[float, float]:
        w = np.abs(h * s)
        return float(np.max(w * np.linalg.norm(diff, axis=1))), float(np.max(w * norms))

    if mode.backward == "RELEASED":
        h = g / m
        flat = grads_of(h)
        return Reference(d / m, _split(flat, shape), flat, [], size_of(h))
    ties = []
    if mode.normalize == "MAX":
        for i in np.flatnonzero(d == m):
            e = np.zeros(n)
            e[i] = dl_dm
            ties.append(grads_of(e))
    h = g / m + dl_dm * dm_dd
    flat = grads_of(h)
    scale = tuple(np.maximum(size_of(g / m), size_of(h)))
    return Reference(d / m, _split(flat, shape), grads_of(g / m), ties, scale)


def _split(flat: np.ndarray, shape: tuple[int, ...]) -> list[np.ndarray]:
    half = flat.size // 2
    return [flat[:half].reshape(shape), flat[half:].reshape(shape)]
