"""The IRG layers compared three ways: Caffe (float32), PyTorch and NumPy (float64).

Why three implementations: the Caffe layers (GEMM formulation, C++), the PyTorch reference
(:mod:`pyirg.torch.layers`: direct pairwise differences, autograd for the exact gradient, a
custom Function for the released one) and a NumPy float64 implementation written here from
the formulas, with the exact gradient derived by hand (chain rule through the normalizer
``m``). Agreement of independently written code is the evidence; any pair disagreeing is a
FAIL. Rows and errors: :mod:`pyirg.verify.report`.

Settings (:class:`Mode`): every ``irg_param`` triple (normalize, squared, backward), the
enum names read from the patched caffe.proto, so none goes unchecked. Inputs
(:func:`map_cases`, :func:`vector_cases`): random, 4-D bottoms, a near-tie for the maximum
(two distances 1e-3 apart, compared in full), an exact tie (distinct pairs at exactly the
same distance), duplicated instances, zero rows, all-identical instances (normalizer 0:
outputs and gradients must be 0), large magnitudes (x 1e3 with a 1e4 offset), a large
common offset (x + 1e3, where the Gram formula cancels badly), N = 1 and N = 2.

One more acceptance, shown in the row's note, only where the backward floor is 0 (every
term of the exact gradient vanishes, so no relative measure exists): a Caffe backward whose
absolute error is within one float32 rounding (``eps``) of
``max_i sum_j |h_ij| (||x_i|| + ||x_j||)``, the size of the terms a GEMM formulation
(``dX = 2 (diag(S 1) - S) X``) adds up. That is the ``identical`` case with the NONE
normalizer: the exact gradient is 0, Caffe's is ~1e-7. The GEMM formulation is backward
stable but not translation invariant, and with a large common offset its cancellation is
judged by the plain 1e-4 relative tolerance: measured about 2e-5 relative at an offset of
1e3 times the spread of the instances (the ``offset`` case, PASS) and 1.1e-4 to 1.7e-4 at
1e4 (not among the cases; it would FAIL, although it is within one float32 rounding of
the instances' magnitude).

Exact ties with ``normalize: MAX`` and ``backward: EXACT``: the maximum's gradient is not
unique there (any convex split of ``dL/dm`` among the tied entries is a valid
subgradient). Both references split it evenly, as the Caffe layer does, and the NumPy row is
compared in full; the Caffe row is compared *tie-agnostically* (:func:`tie_agnostic`): the
Caffe gradient must be the constant-``m`` gradient plus ``dL/dm`` times a convex combination
of the tied entries' distance gradients (weights fitted by least squares, then checked to
be >= 0 and to sum to 1); the residual is the reported backward error. A float32
computation may break an exact tie either way, which this accepts and nothing else does.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from caffe.proto import caffe_pb2

from pyirg.caffeio import caffe_net
from pyirg.distill import BACKWARD, IRG_TYPES, NORMALIZE
from pyirg.torch import layers as ref
from pyirg.verify.report import (
    CAFFE_ROW,
    DOUBLE_TOL,
    EPS32,
    FLOAT_TOL,
    NUMPY_ROW,
    TINY,
    Row,
    errors,
    flatten,
    make_row,
)

SQUARED = (True, False)
LAYERS = IRG_TYPES
MAP = LAYERS[0]
#: Smallest fitted tie weight still counted as convex (weights sum to 1).
TIE_WEIGHT_SLACK = 1e-3


@dataclass(frozen=True)
class Mode:
    """One ``irg_param`` setting (the defaults are caffe.proto's); the fields are named as
    the references' and DistillConfig's keyword arguments, so it passes as them
    (``**asdict(mode)``: a field they do not take is an error, not a silent shift)."""

    normalize: str = "MAX"
    squared: bool = True
    backward: str = "EXACT"

    @property
    def label(self) -> str:
        return f"{self.normalize}/{'sq' if self.squared else 'nosq'}/{self.backward}"


ALL_MODES = tuple(Mode(*m) for m in itertools.product(NORMALIZE, SQUARED, BACKWARD))
DEFAULT_MODE = Mode()

# ------------------------------------------------------------------------------ cases


@dataclass(frozen=True)
class Case:
    """Bottoms (float32, what Caffe gets; the references see the same values in double)."""

    name: str
    bottoms: tuple[np.ndarray, ...]


def pooled(a: np.ndarray) -> np.ndarray:
    """A float32 bottom; (N, C) becomes (N, C, 1, 1), the globally pooled shape the nets
    give the layers."""
    return np.ascontiguousarray(a.reshape(a.shape + (1, 1)) if a.ndim == 2 else a, np.float32)


def _case(name: str, *arrays: np.ndarray) -> Case:
    return Case(name, tuple(pooled(a) for a in arrays))


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
        _case("random", x),
        _case("4d", rng.standard_normal((5, 2, 3, 2))),
        _case("near_tie", near),
        _case("exact_tie", tie),
        _case("duplicates", dup),
        _case("zero_rows", zero_rows),
        _case("all_zero", np.zeros((5, 4, 1, 1))),
        _case("identical", np.tile(x[:1], (4, 1))),
        _case("large", x * 1e3 + 1e4),
        _case("offset", x + 1e3),
        _case("n1", x[:1]),
        _case("n2", x[:2]),
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
        _case("random", x, y),
        _case("4d", rng.standard_normal((5, 2, 3, 2)), rng.standard_normal((5, 2, 3, 2))),
        _case("near_tie", base + near_diff, base),
        _case("exact_tie", base + tie_diff, base),
        _case("duplicates", dup, y),
        _case("zero_rows", zx, zy),
        _case("all_zero", np.zeros((5, 4, 1, 1)), np.zeros((5, 4, 1, 1))),
        _case("identical", x, x),
        _case("large", x * 1e3 + 1e4, y * 1e3 + 1e4),
        _case("offset", x + 1e3, y + 1e3),
        _case("n1", x[:1], y[:1]),
        _case("n2", x[:2], y[:2]),
    ]


CASE_NAMES = tuple(c.name for c in map_cases(np.random.default_rng(0)))

# ---------------------------------------------------------------- the NumPy reference


@dataclass
class Reference:
    """A NumPy result: output, bottom gradients, and what the tie-agnostic check needs.

    ``const`` is the gradient with ``m`` held constant (both halves of each pair for the
    map); ``ties`` holds, per group of tied maximal entries, ``dL/dm`` times that group's
    distance gradient, flattened like the concatenated bottom gradients; ``scale`` is the
    size of the terms the gradient sums, (with differences ``x_i - x_j``, with the
    instances themselves) for the relative-error floor (:mod:`pyirg.verify.report`).
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


def _normalizer(d: np.ndarray, normalize: str, off: np.ndarray) -> tuple[float, np.ndarray]:
    """(m, dm/dd) over the entries ``off`` marks (the map leaves out its diagonal)."""
    if normalize == "MAX":
        return float(d.max()), (d == d.max()) / np.count_nonzero(d == d.max())
    count = int(off.sum())
    if normalize == "MEAN":
        return (float((d * off).sum() / count), off / count) if count else (0.0, off)
    return 1.0, np.zeros_like(d)


def numpy_map(x: np.ndarray, g: np.ndarray, mode: Mode) -> Reference:
    """BatchEuclideanMap forward and backward in float64, from the formulas."""
    shape = x.shape
    x = x.reshape(shape[0], -1).astype(np.float64)
    n = x.shape[0]
    diff = x[:, None, :] - x[None, :, :]  # diff[i, j] = x_i - x_j
    q = np.einsum("ijk,ijk->ij", diff, diff)
    d = q if mode.squared else np.sqrt(q)
    m, dm_dd = _normalizer(d, mode.normalize, 1.0 - np.eye(n))
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
        dx = np.einsum("ij,ijk->ik", g / m * s, diff)  # only the G_ij half of each pair
        return Reference(d / m, [dx.reshape(shape)], dx.ravel(), [], size_of(g / m))
    ties = []
    if mode.normalize == "MAX":
        for k, j in zip(*np.nonzero(np.triu(d == m))):
            e = np.zeros_like(d)
            e[k, j] = dl_dm
            ties.append(grad_of(e).ravel())  # d_kl and d_lk are one function of x
    h = g / m + dl_dm * dm_dd
    scale = tuple(np.maximum(size_of(g / m), size_of(h)))
    return Reference(d / m, [grad_of(h).reshape(shape)], grad_of(g / m).ravel(), ties, scale)


def numpy_vector(x: np.ndarray, y: np.ndarray, g: np.ndarray, mode: Mode) -> Reference:
    """BatchEuclideanVector forward and backward in float64, from the formulas."""
    shape = x.shape
    n = shape[0]
    diff = x.reshape(n, -1).astype(np.float64) - y.reshape(n, -1).astype(np.float64)
    q = np.einsum("ik,ik->i", diff, diff)
    d = q if mode.squared else np.sqrt(q)
    m, dm_dd = _normalizer(d, mode.normalize, np.ones(n))
    if m == 0:
        zero = np.zeros(shape)
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

    def split(flat: np.ndarray) -> list[np.ndarray]:
        return [flat[: flat.size // 2].reshape(shape), flat[flat.size // 2 :].reshape(shape)]

    if mode.backward == "RELEASED":
        flat = grads_of(g / m)
        return Reference(d / m, split(flat), flat, [], size_of(g / m))
    ties = []
    if mode.normalize == "MAX":
        for i in np.flatnonzero(d == m):
            e = np.zeros(n)
            e[i] = dl_dm
            ties.append(grads_of(e))
    h = g / m + dl_dm * dm_dd
    scale = tuple(np.maximum(size_of(g / m), size_of(h)))
    return Reference(d / m, split(grads_of(h)), grads_of(g / m), ties, scale)


# ------------------------------------------------------------- the two under test


def torch_layer(
    layer: str, bottoms: Sequence[np.ndarray], g: np.ndarray, mode: Mode
) -> tuple[np.ndarray, list[np.ndarray]]:
    """The reference layer in float64 autograd (looked up at call time, so tests can patch)."""
    xs = [torch.tensor(b, dtype=torch.float64, requires_grad=True) for b in bottoms]
    function = ref.batch_euclidean_map if layer == MAP else ref.batch_euclidean_vector
    out = function(*xs, **asdict(mode))
    out.backward(torch.tensor(g, dtype=torch.float64).reshape(out.shape))
    grads = [
        np.zeros(b.shape) if x.grad is None else x.grad.detach().numpy()
        for x, b in zip(xs, bottoms)
    ]
    return out.detach().numpy(), grads


def one_layer_net(layer: str, bottoms: dict[str, np.ndarray]) -> tuple[Any, Any]:
    """Input(bottoms) -> one ``layer`` layer with top "top", ``force_backward`` so the
    bottoms get diffs: (the NetParameter, the layer's LayerParameter to set up)."""
    param = caffe_pb2.NetParameter(name=f"verify_{layer}", force_backward=True)
    data = param.layer.add(name="input", type="Input", top=list(bottoms))
    for array in bottoms.values():
        data.input_param.shape.add().dim.extend(array.shape)
    return param, param.layer.add(name="layer", type=layer, top=["top"], bottom=data.top)


def forward_backward(
    net: Any, bottoms: dict[str, np.ndarray], top_diff: np.ndarray | float
) -> tuple[np.ndarray, list[np.ndarray]]:
    """A :func:`one_layer_net` in pycaffe (float32, its only instantiation): forward, then
    backward from ``top_diff``; (top, the bottoms' diffs)."""
    for name, array in bottoms.items():
        net.blobs[name].data[...] = array
    net.forward()
    top = net.blobs["top"]
    top.diff[...] = np.reshape(top_diff, top.diff.shape)
    for name in bottoms:
        net.blobs[name].diff[...] = np.nan  # a layer that writes nothing must show
    net.backward()
    return top.data.copy(), [net.blobs[name].diff.copy() for name in bottoms]


def caffe_layer(
    layer: str, bottoms: Sequence[np.ndarray], g: np.ndarray, mode: Mode
) -> tuple[np.ndarray, list[np.ndarray]]:
    """The Caffe layer, backward from top diff ``g``."""
    inputs = {f"b{i}": b for i, b in enumerate(bottoms)}
    param, irg = one_layer_net(layer, inputs)
    irg.irg_param.normalize = getattr(caffe_pb2.IRGParameter, mode.normalize)
    irg.irg_param.squared = mode.squared
    irg.irg_param.backward = getattr(caffe_pb2.IRGParameter, mode.backward)
    top, grads = forward_backward(caffe_net(param), inputs, g)
    return top.reshape((bottoms[0].shape[0],) * (2 if layer == MAP else 1)), grads


# -------------------------------------------------------------------- comparisons


def tie_agnostic(
    test: np.ndarray, reference: Reference, torch_grad: np.ndarray
) -> tuple[float, float, np.ndarray]:
    """(abs, rel, weights): best convex split of dL/dm among tied entries, and its residual."""
    dirs = np.stack(reference.ties)
    target = test - reference.const - dirs[-1]
    basis = (dirs[:-1] - dirs[-1]).T
    coef = np.linalg.lstsq(basis, target, rcond=None)[0]
    weights = np.append(coef, 1.0 - coef.sum())
    residual = target - basis @ coef
    err = float(np.max(np.abs(residual)))
    floor = max(float(np.max(np.abs(torch_grad))), reference.scale[0], TINY)
    return err, err / floor, weights


def _caffe_backward(
    c_grad: np.ndarray, num: Reference, t_grad: np.ndarray
) -> tuple[tuple[float, float], str, bool | None]:
    """(errors, note, verdict or None for the plain test) of the Caffe row's backward."""
    if len(num.ties) > 1:
        bwd_abs, bwd_rel, weights = tie_agnostic(c_grad, num, t_grad)
        convex = bool(np.all(weights >= -TIE_WEIGHT_SLACK))
        note = "tie-agnostic bwd, weights " + " ".join(f"{w:.3g}" for w in weights)
        return (bwd_abs, bwd_rel), note, convex and bwd_rel <= FLOAT_TOL
    bwd_abs, bwd_rel = errors(c_grad, t_grad, num.scale[0])
    rounding = EPS32 * num.scale[1]
    if num.scale[0] == 0 and bwd_rel > FLOAT_TOL and bwd_abs <= rounding:
        note = f"bwd within one float32 rounding of the instances ({rounding:.1e})"
        return (bwd_abs, bwd_rel), note, True
    return (bwd_abs, bwd_rel), "", None


def compare_layer(layer: str, mode: Mode, case: Case, rng: np.random.Generator) -> list[Row]:
    """Caffe vs torch and NumPy vs torch for one layer, setting and input."""
    n = case.bottoms[0].shape[0]
    g = rng.standard_normal((n, n) if layer == MAP else (n,)).astype(np.float32).astype(np.float64)
    bottoms64 = [b.astype(np.float64) for b in case.bottoms]
    t_top, t_grads = torch_layer(layer, bottoms64, g, mode)
    num = numpy_map(*bottoms64, g, mode) if layer == MAP else numpy_vector(*bottoms64, g, mode)
    c_top, c_grads = caffe_layer(layer, case.bottoms, g, mode)
    t_flat = flatten(t_grads)
    bwd, note, bwd_ok = _caffe_backward(flatten(c_grads), num, t_flat)
    row = (layer, mode.label)
    num_bwd = errors(flatten(num.grads), t_flat, num.scale[0])
    return [
        make_row(*row, CAFFE_ROW, case.name, errors(c_top, t_top), bwd, FLOAT_TOL, note, bwd_ok),
        make_row(*row, NUMPY_ROW, case.name, errors(num.top, t_top), num_bwd, DOUBLE_TOL),
    ]


QUICK_CASES = ("random", "4d", "near_tie", "exact_tie", "identical", "offset", "n2")
QUICK_HARD_MODES = (DEFAULT_MODE, Mode("MEAN", False, "RELEASED"), Mode("MAX", False, "EXACT"))


def compare_layers(full: bool, seed: int) -> list[Row]:
    """Every layer x mode x case in full mode; in quick mode every mode on random inputs
    and a few modes on the hard cases. One generator, so a seed fixes the whole run."""
    rng = np.random.default_rng(seed)
    cases = {
        LAYERS[0]: {c.name: c for c in map_cases(rng)},
        LAYERS[1]: {c.name: c for c in vector_cases(rng)},
    }
    rows: list[Row] = []
    for layer, mode, case in itertools.product(LAYERS, ALL_MODES, CASE_NAMES):
        if full or case == "random" or (case in QUICK_CASES and mode in QUICK_HARD_MODES):
            rows.extend(compare_layer(layer, mode, cases[layer][case], rng))
    return rows
