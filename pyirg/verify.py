"""Check the Caffe IRG layers and the generated distillation nets against the PyTorch reference.

``python tools/verify.py [--full] [--json OUT] [--no-nets] [--seed S]``

Why three implementations: the Caffe layers (GEMM formulation, C++), the PyTorch reference
(direct pairwise differences, autograd for the exact gradient, a custom Function for the
released one) and a NumPy float64 implementation written here from the formulas, with the
exact gradient derived by hand (chain rule through the normalizer ``m``). Agreement of
independently written code is the evidence; any pair disagreeing is a FAIL.

Rows of the table, one per (layer, mode, case) and comparison:

- ``caffe-f32 vs torch-f64``: pycaffe nets are float32 only, so the Caffe layer runs in
  float and the reference in double on the same (float32-representable) inputs and upstream
  gradient ``G``; tolerance 1e-4. The C++ ``double`` instantiation is not reachable from
  Python: it is covered by the gtest ``GradientChecker`` tests, which run in double.
- ``numpy-f64 vs torch-f64``: the two double references, tolerance 1e-9.

Errors: ``abs`` = max |test - reference| and ``rel`` = abs / max(max |reference|, floor)
over the layer's output (fwd) and over all bottom gradients together (bwd). The floor is
the float64 ``tiny`` for the forward. For the backward it is the size of the terms the
gradient is a sum of, ``max_i sum_j |h_ij| ||x_i - x_j||`` with ``h`` the coefficients
of the constant-``m`` and of the full gradient. It differs from max |reference| only where
the gradient is a cancellation that vanishes identically (N = 2 with MAX or MEAN, N = 1
with MAX), where a float computation's rounding noise cannot be judged against 0.

One more acceptance, shown in the row's note, only where that floor is 0 (every term of
the exact gradient vanishes, so no relative measure exists): a Caffe backward whose
absolute error is within one float32 rounding (``eps``) of
``max_i sum_j |h_ij| (||x_i|| + ||x_j||)``, the size of the terms a GEMM formulation
(``dX = 2 (diag(S 1) - S) X``) adds up. That is the ``identical`` case with the NONE
normalizer: the exact gradient is 0, Caffe's is ~1e-7. The GEMM formulation is backward
stable but not translation invariant, and with a large common offset its cancellation is
judged by the plain 1e-4 relative tolerance: measured about 2e-5 relative at an offset of
1e3 times the spread of the instances (the ``offset`` case, PASS) and 1.1e-4 to 1.7e-4 at
1e4 (not among the cases; it would FAIL, although it is within one float32 rounding of
the instances' magnitude).

Cases: random inputs, 4-D bottoms, a near-tie for the maximum (two distances 1e-3 apart,
compared in full), an exact tie (distinct pairs at exactly the same distance), duplicated
instances, zero rows, all-identical instances (normalizer 0: outputs and gradients must be
0), large magnitudes (x 1e3 with a 1e4 offset) and a large common offset (x + 1e3, where the
Gram formula cancels badly), N = 1 and N = 2.

Exact ties with ``normalize: MAX`` and ``backward: EXACT``: the maximum's gradient is not
unique there (any convex split of ``dL/dm`` among the tied entries is a valid
subgradient). Both references split it evenly, as the Caffe layer does, and the NumPy row is
compared in full; the Caffe row is compared *tie-agnostically*: the Caffe gradient must be
the constant-``m`` gradient plus ``dL/dm`` times a convex combination of the tied entries'
distance gradients (weights fitted by least squares, then checked to be >= 0 and to sum to
1); the residual is the reported backward error. A float32 computation may break an exact
tie either way, which this accepts and nothing else does.

Whole nets (``pyirg.distill``): the IRG, IRG-t and MTK training nets of a small teacher and
student (ResNet-14 x0.5 -> ResNet-14 x0.25, Input data, batch 8, 8x8 images; ResNet-14 so
that every stage has the two blocks an IRG-t pair needs) in pycaffe, and the same networks
in PyTorch (``CifarResNet`` teacher in eval mode, i.e. global statistics as Caffe's frozen
teacher with ``use_global_stats``; student in train mode, i.e. batch statistics) with
:class:`pyirg.torch.IRGLoss`, weights copied from the pycaffe net through
:mod:`pyirg.torch.caffemodel` (every weight, bias, scale and BatchNorm statistic is set
to random values first, with a BatchNorm scale factor of 2.5). One row per loss term and
one for the weighted total: ``fwd`` compares the term's value (Caffe's loss top, i.e.
unweighted), ``bwd`` the student's parameter gradients of that term alone (all student
parameters together). Caffe's per-term gradient is obtained by setting the loss tops'
diffs (where Caffe keeps its loss weights) to 1 for that term's layers and 0 for the rest
before ``net.backward()``; the total uses the nets' own loss weights. No solver is
involved, so no weight decay. Tolerance 1e-4.

Quick mode (default, a few seconds): all 12 settings of both layers on random inputs, the
hard cases for three settings, and each method's net once with the default setting.
``--full``: every setting x case, and every setting of every method's net plus 16x16
images.

Exit status: 0 when every row passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from pyirg.torch import layers as ref

NORMALIZE = ("MAX", "MEAN", "NONE")
SQUARED = (True, False)
BACKWARD = ("EXACT", "RELEASED")
LAYERS = ("BatchEuclideanMap", "BatchEuclideanVector")
FLOAT_TOL = 1e-4
DOUBLE_TOL = 1e-9
TINY = float(np.finfo(np.float64).tiny)
EPS32 = float(np.finfo(np.float32).eps)
CAFFE_ROW = "caffe-f32 vs torch-f64"
NUMPY_ROW = "numpy-f64 vs torch-f64"
#: Smallest fitted tie weight still counted as convex (weights sum to 1).
TIE_WEIGHT_SLACK = 1e-3


@dataclass(frozen=True)
class Mode:
    """One ``irg_param`` setting."""

    normalize: str = "MAX"
    squared: bool = True
    backward: str = "EXACT"

    @property
    def label(self) -> str:
        return f"{self.normalize}/{'sq' if self.squared else 'nosq'}/{self.backward}"


ALL_MODES = tuple(Mode(*m) for m in itertools.product(NORMALIZE, SQUARED, BACKWARD))
DEFAULT_MODE = Mode()


@dataclass
class Row:
    """One line of the report (errors as defined in the module docstring)."""

    layer: str
    mode: str
    dtype: str
    case: str
    fwd_abs: float
    fwd_rel: float
    bwd_abs: float
    bwd_rel: float
    tol: float
    passed: bool
    note: str = ""


def _row(
    layer: str,
    mode: str,
    dtype: str,
    case: str,
    fwd: tuple[float, float],
    bwd: tuple[float, float],
    tol: float,
    note: str = "",
    bwd_ok: bool | None = None,
) -> Row:
    """A report row; ``bwd_ok`` overrides the relative-error test of the backward."""
    fwd_ok = math.isnan(fwd[1]) or fwd[1] <= tol
    if bwd_ok is None:
        bwd_ok = math.isnan(bwd[1]) or bwd[1] <= tol
    errors = (float(fwd[0]), float(fwd[1]), float(bwd[0]), float(bwd[1]))
    return Row(layer, mode, dtype, case, *errors, tol, bool(fwd_ok and bwd_ok), note)


def _errors(test: np.ndarray, reference: np.ndarray, floor: float = TINY) -> tuple[float, float]:
    """(max abs error, relative error); inf when the test is not finite or shapes differ."""
    test, reference = np.asarray(test, np.float64), np.asarray(reference, np.float64)
    if test.shape != reference.shape or not np.all(np.isfinite(test)):
        return math.inf, math.inf
    if test.size == 0:
        return 0.0, 0.0
    err = float(np.max(np.abs(test - reference)))
    return err, err / max(float(np.max(np.abs(reference))), floor, TINY)


# ============================================================================ cases


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


# ============================================================================ NumPy f64


@dataclass
class Reference:
    """A NumPy result: output, bottom gradients, and what the tie-agnostic check needs.

    ``const`` is the gradient with ``m`` held constant (both halves of each pair for the
    map); ``ties`` holds, per group of tied maximal entries, ``dL/dm`` times that group's
    distance gradient, flattened like the concatenated bottom gradients; ``scale`` is the
    size of the terms the gradient sums, (with differences ``x_i - x_j``, with the
    instances themselves) for the relative-error floor (module docstring).
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


# ============================================================================ PyTorch, Caffe


def torch_layer(
    layer: str, bottoms: Sequence[np.ndarray], g: np.ndarray, mode: Mode
) -> tuple[np.ndarray, list[np.ndarray]]:
    """The reference layer in float64 autograd (looked up at call time, so tests can patch)."""
    xs = [torch.tensor(b, dtype=torch.float64, requires_grad=True) for b in bottoms]
    if layer == "BatchEuclideanMap":
        out = ref.batch_euclidean_map(xs[0], mode.normalize, mode.squared, mode.backward)
    else:
        out = ref.batch_euclidean_vector(*xs, mode.normalize, mode.squared, mode.backward)
    out.backward(torch.tensor(g, dtype=torch.float64).reshape(out.shape))
    grads = [
        np.zeros(b.shape) if x.grad is None else x.grad.detach().numpy()
        for x, b in zip(xs, bottoms)
    ]
    return out.detach().numpy(), grads


def load_net(net_param: Any, phase: str = "TEST") -> Any:
    """A pycaffe Net from a NetParameter (pycaffe only reads files)."""
    import caffe
    from google.protobuf import text_format

    fd, path = tempfile.mkstemp(suffix=".prototxt")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text_format.MessageToString(net_param))
        return caffe.Net(path, getattr(caffe, phase))
    finally:
        os.unlink(path)


def layer_net(layer: str, shapes: Sequence[tuple[int, ...]], mode: Mode) -> Any:
    """Input blobs -> the layer, force_backward so the bottoms get diffs."""
    from caffe.proto import caffe_pb2

    net = caffe_pb2.NetParameter(name=f"verify_{layer}", force_backward=True)
    data = net.layer.add(name="input", type="Input")
    for i, shape in enumerate(shapes):
        data.top.append(f"b{i}")
        data.input_param.shape.add().dim.extend(shape)
    irg = net.layer.add(name="irg", type=layer, top=["top"], bottom=data.top)
    irg.irg_param.normalize = getattr(caffe_pb2.IRGParameter, mode.normalize)
    irg.irg_param.squared = mode.squared
    irg.irg_param.backward = getattr(caffe_pb2.IRGParameter, mode.backward)
    return load_net(net)


def caffe_layer(
    layer: str, bottoms: Sequence[np.ndarray], g: np.ndarray, mode: Mode
) -> tuple[np.ndarray, list[np.ndarray]]:
    """The Caffe layer in float32: forward, then backward from top diff ``g``."""
    net = layer_net(layer, [b.shape for b in bottoms], mode)
    for i, b in enumerate(bottoms):
        net.blobs[f"b{i}"].data[...] = b
    net.forward()
    top = net.blobs["top"]
    top.diff[...] = g.reshape(top.diff.shape)
    for i in range(len(bottoms)):
        net.blobs[f"b{i}"].diff[...] = np.nan  # a layer that writes nothing must show
    net.backward()
    out_shape = (bottoms[0].shape[0],) * (2 if layer == "BatchEuclideanMap" else 1)
    grads = [net.blobs[f"b{i}"].diff.copy() for i in range(len(bottoms))]
    return top.data.reshape(out_shape).copy(), grads


# ============================================================================ layer checks


def _flat(arrays: Sequence[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(a, np.float64).ravel() for a in arrays])


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


def check_layer(layer: str, mode: Mode, case: Case, rng: np.random.Generator) -> list[Row]:
    """Caffe vs torch and NumPy vs torch for one layer, setting and input."""
    n = case.bottoms[0].shape[0]
    g_shape = (n, n) if layer == "BatchEuclideanMap" else (n,)
    g = rng.standard_normal(g_shape).astype(np.float32).astype(np.float64)
    bottoms64 = [b.astype(np.float64) for b in case.bottoms]
    t_top, t_grads = torch_layer(layer, bottoms64, g, mode)
    if layer == "BatchEuclideanMap":
        num = numpy_map(bottoms64[0], g, mode)
    else:
        num = numpy_vector(bottoms64[0], bottoms64[1], g, mode)
    c_top, c_grads = caffe_layer(layer, case.bottoms, g, mode)
    t_flat = _flat(t_grads)
    note, bwd_ok = "", None
    if len(num.ties) > 1:
        bwd_abs, bwd_rel, weights = tie_agnostic(_flat(c_grads), num, t_flat)
        convex = bool(np.all(weights >= -TIE_WEIGHT_SLACK))
        bwd_ok = convex and bwd_rel <= FLOAT_TOL
        note = "tie-agnostic bwd, weights " + " ".join(f"{w:.3g}" for w in weights)
    else:
        bwd_abs, bwd_rel = _errors(_flat(c_grads), t_flat, num.scale[0])
        if num.scale[0] == 0 and bwd_rel > FLOAT_TOL and bwd_abs <= EPS32 * num.scale[1]:
            bwd_ok = True
            note = f"bwd within one float32 rounding of the instances ({EPS32 * num.scale[1]:.1e})"
    caffe_row = _row(
        layer,
        mode.label,
        CAFFE_ROW,
        case.name,
        _errors(c_top, t_top),
        (bwd_abs, bwd_rel),
        FLOAT_TOL,
        note,
        bwd_ok,
    )
    numpy_row = _row(
        layer,
        mode.label,
        NUMPY_ROW,
        case.name,
        _errors(num.top, t_top),
        _errors(_flat(num.grads), t_flat, num.scale[0]),
        DOUBLE_TOL,
    )
    return [caffe_row, numpy_row]


QUICK_CASES = ("random", "4d", "near_tie", "exact_tie", "identical", "offset", "n2")
QUICK_HARD_MODES = (DEFAULT_MODE, Mode("MEAN", False, "RELEASED"), Mode("MAX", False, "EXACT"))


def layer_plan(full: bool) -> Iterator[tuple[str, Mode, str]]:
    """(layer, mode, case name): every combination in full mode; in quick mode every mode
    on random inputs and a few modes on the hard cases."""
    for layer in LAYERS:
        for mode in ALL_MODES:
            for case in CASE_NAMES:
                if full or case == "random":
                    yield layer, mode, case
                elif case in QUICK_CASES and mode in QUICK_HARD_MODES:
                    yield layer, mode, case


CASE_NAMES = tuple(c.name for c in map_cases(np.random.default_rng(0)))


def check_layers(full: bool, seed: int) -> list[Row]:
    rows: list[Row] = []
    rng = np.random.default_rng(seed)
    cases = {
        "BatchEuclideanMap": {c.name: c for c in map_cases(rng)},
        "BatchEuclideanVector": {c.name: c for c in vector_cases(rng)},
    }
    for layer, mode, case in layer_plan(full):
        rows.extend(check_layer(layer, mode, cases[layer][case], rng))
    return rows


# ============================================================================ whole nets


NET_METHODS = ("IRG", "IRG-t", "MTK")
#: (depth, width) of the whole-net teacher and student; ResNet-14 has two blocks per stage.
NET_TEACHER, NET_STUDENT = (14, 0.5), (14, 0.25)
NET_BATCH = 8
TERMS = ("gt", "logits", "edges", "transform")


@dataclass(frozen=True)
class NetCase:
    """One whole-net comparison: method, irg_param setting and image size."""

    method: str
    mode: Mode = DEFAULT_MODE
    size: int = 8

    @property
    def label(self) -> str:
        return f"net {self.method} {self.size}x{self.size}"


def net_plan(full: bool) -> list[NetCase]:
    """Quick: each method once with the default setting; full: every setting, and 16x16."""
    if not full:
        return [NetCase(m) for m in NET_METHODS]
    plan = [NetCase(m, mode) for m in NET_METHODS for mode in ALL_MODES]
    return plan + [NetCase(m, DEFAULT_MODE, 16) for m in NET_METHODS]


def distill_config(case: NetCase) -> Any:
    """The pyirg.distill configuration of a whole-net case (Input data, batch 8)."""
    from pyirg.arch import cifar_resnet
    from pyirg.distill import DistillConfig
    from pyirg.netspec import DataConfig, Dataset

    dataset = Dataset("verify", 3, case.size, 10, 0, NET_BATCH, NET_BATCH)
    data = DataConfig(kind="input", dataset=dataset, train_batch=NET_BATCH, test_batch=NET_BATCH)
    return DistillConfig.for_method(
        case.method,
        cifar_resnet(*NET_TEACHER),
        cifar_resnet(*NET_STUDENT),
        data=data,
        normalize=case.mode.normalize,
        squared=case.mode.squared,
        backward=case.mode.backward,
        name=f"verify_{case.method}",
    )


def randomize_params(net: Any, rng: np.random.Generator) -> None:
    """Non-trivial weights everywhere: fillers give zero biases, unit scales and empty
    BatchNorm statistics, under which a wrong blob mapping could go unnoticed."""
    for name, blobs in net.params.items():
        kind = net.layer_dict[name].type
        if kind == "BatchNorm":
            factor = 2.5  # a moving-average factor != 1, so the division is exercised
            c = blobs[0].data.shape[0]
            blobs[0].data[...] = factor * 0.1 * rng.standard_normal(c)
            blobs[1].data[...] = factor * rng.uniform(0.5, 1.5, c)
            blobs[2].data[...] = factor
        elif kind == "Scale":
            blobs[0].data[...] = rng.uniform(0.5, 1.5, blobs[0].data.shape)
            blobs[1].data[...] = 0.1 * rng.standard_normal(blobs[1].data.shape)
        elif kind in ("Convolution", "InnerProduct"):
            w = blobs[0].data
            fan_in = int(np.prod(w.shape[1:]))
            gain = 2.0 if kind == "Convolution" else 1.0
            w[...] = rng.standard_normal(w.shape) * math.sqrt(gain / fan_in)
            blobs[1].data[...] = 0.1 * rng.standard_normal(blobs[1].data.shape)
        else:
            raise ValueError(f"verify: no initialization for layer {name!r} of type {kind}")


def loss_terms(net_param: Any, student_prefix: str) -> dict[str, tuple[str, float]]:
    """Loss top -> (term, loss weight), classified by what feeds each loss layer.

    Independent of the generator's naming: an EuclideanLoss of two BatchEuclideanMap tops
    is an edge term, of two BatchEuclideanVector tops a transformation term, of two
    InnerProduct tops the logits term; the student's SoftmaxWithLoss is the ground truth.
    """
    producer: dict[str, tuple[str, str]] = {}
    out: dict[str, tuple[str, float]] = {}
    for layer in net_param.layer:
        weight = layer.loss_weight[0] if layer.loss_weight else None
        if layer.type in ("EuclideanLoss", "SoftmaxWithLoss"):
            kinds = {producer[b][0] for b in layer.bottom if b in producer}
            owners = {producer[b][1].startswith(student_prefix) for b in layer.bottom[:1]}
            if layer.type == "SoftmaxWithLoss":
                term = "gt" if owners == {True} else None
            else:
                term = {
                    frozenset({"BatchEuclideanMap"}): "edges",
                    frozenset({"BatchEuclideanVector"}): "transform",
                    frozenset({"InnerProduct"}): "logits",
                }.get(frozenset(kinds))
            weight = 1.0 if weight is None else float(weight)
            if term is None and weight:
                raise ValueError(
                    f"verify: cannot tell which IRG term loss layer {layer.name!r} "
                    f"({layer.type}, bottoms {list(layer.bottom)}) belongs to"
                )
            if term is not None:
                out[layer.top[0]] = (term, weight)
        for top in layer.top:
            if top not in layer.bottom:  # in-place layers keep the producer
                producer[top] = (layer.type, layer.name)
    return out


def _student_param_keys(model: Any, prefix: str) -> dict[str, tuple[str, int]]:
    from pyirg.torch import caffe_name_map

    params = dict(model.named_parameters())
    return {
        k: (prefix + layer, i) for k, (layer, i) in caffe_name_map(model).items() if k in params
    }


def caffe_net_run(
    net: Any,
    x: np.ndarray,
    labels: np.ndarray,
    terms: dict[str, tuple[str, float]],
    keys: dict[str, tuple[str, int]],
) -> tuple[dict[str, float], dict[str, dict[str, np.ndarray]]]:
    """(loss value per term, student gradients per term and for the weighted total).

    One forward per backward pass: an in-place Scale layer keeps its bottom in a buffer
    that its backward overwrites, so Caffe cannot run two backward passes after one
    forward. Running the forward again changes nothing but the student's moving averages,
    which TRAIN-phase outputs do not use.
    """
    net.blobs["Data1"].data[...] = x
    net.blobs["Data2"].data[...] = labels
    net.forward()
    values: dict[str, float] = {}
    for top, (term, _) in terms.items():
        values[term] = values.get(term, 0.0) + float(net.blobs[top].data.ravel()[0])
    grads = {}
    for which in sorted(set(t for t, _ in terms.values())) + ["total"]:
        net.forward()
        for top, (term, weight) in terms.items():
            diff = weight if which == "total" else float(term == which)
            net.blobs[top].diff[...] = diff  # Caffe's loss weight lives in the top diff
        for blobs in net.params.values():
            for blob in blobs:
                blob.diff[...] = 0  # param diffs accumulate across backward passes
        net.backward()
        grads[which] = {k: net.params[layer][i].diff.copy() for k, (layer, i) in keys.items()}
    values["total"] = sum(values[t] * w for t, w in {t: w for t, w in terms.values()}.items())
    return values, grads


def check_net(case: NetCase, rng: np.random.Generator) -> list[Row]:
    """A distillation net in pycaffe (float32) vs the same in PyTorch (float64)."""
    from pyirg.distill import distill_net
    from pyirg.torch import CifarResNet, IRGLoss
    from pyirg.torch.caffemodel import layers_from_pycaffe, load_caffe_weights

    cfg = distill_config(case)
    net_param = distill_net(cfg)
    net = load_net(net_param, "TRAIN")
    randomize_params(net, rng)
    sp = cfg.student_prefix
    teacher = CifarResNet(cfg.teacher).double().eval()  # frozen: global statistics
    student = CifarResNet(cfg.student).double().train()  # trained: batch statistics
    blobs = layers_from_pycaffe(net)
    load_caffe_weights(teacher, blobs)
    load_caffe_weights(student, blobs, prefix=sp)

    x = rng.standard_normal((NET_BATCH, 3, case.size, case.size)).astype(np.float32)
    labels = rng.integers(0, cfg.teacher.num_classes, NET_BATCH)
    terms = loss_terms(net_param, sp)
    keys = _student_param_keys(student, sp)
    c_values, c_grads = caffe_net_run(net, x, labels.astype(np.float32), terms, keys)

    t_pairs, s_pairs = cfg.pairs() if cfg.transform else ((), ())
    loss = IRGLoss(
        gt_weight=cfg.gt,
        logits_weight=cfg.logits,
        edge_weight=cfg.edges,
        transform_weight=cfg.transform,
        edge_layers=cfg.edge_layers if cfg.edges else (),
        transform_pairs=s_pairs,
        teacher_transform_pairs=t_pairs,
        normalize=cfg.normalize,
        squared=cfg.squared,
        backward=cfg.backward,
    )
    xt = torch.tensor(x, dtype=torch.float64)
    with torch.no_grad():
        _, t_feats = teacher(xt, return_features=True)
    _, s_feats = student(xt, return_features=True)
    t_terms = loss(s_feats, t_feats, torch.tensor(labels))
    params = dict(student.named_parameters())
    rows = []
    for which in [*(t for t in TERMS if t in c_grads), "total"]:
        if which not in t_terms:
            rows.append(
                _row(
                    case.label,
                    case.mode.label,
                    CAFFE_ROW,
                    which,
                    (math.inf,) * 2,
                    (math.inf,) * 2,
                    FLOAT_TOL,
                    "term missing from the PyTorch loss",
                )
            )
            continue
        g = torch.autograd.grad(
            t_terms[which], [params[k] for k in keys], retain_graph=True, allow_unused=True
        )
        t_flat = _flat(
            [np.zeros(params[k].shape) if gk is None else gk.numpy() for k, gk in zip(keys, g)]
        )
        c_flat = _flat([c_grads[which][k] for k in keys])
        fwd = _errors(np.array(c_values[which]), np.array(t_terms[which].item()))
        rows.append(
            _row(
                case.label,
                case.mode.label,
                CAFFE_ROW,
                which,
                fwd,
                _errors(c_flat, t_flat),
                FLOAT_TOL,
                "fwd: loss term, bwd: all student parameter gradients",
            )
        )
    missing = set(t_terms) - set(c_values) - {"total"}
    if missing:
        rows.append(
            _row(
                case.label,
                case.mode.label,
                CAFFE_ROW,
                ",".join(sorted(missing)),
                (math.inf,) * 2,
                (math.inf,) * 2,
                FLOAT_TOL,
                "term missing from the Caffe net",
            )
        )
    return rows


def check_nets(full: bool, seed: int) -> list[Row]:
    """Every method's distillation net in pycaffe vs PyTorch (module docstring)."""
    rng = np.random.default_rng(seed + 1)
    rows = []
    for case in net_plan(full):
        rows.extend(check_net(case, rng))
    return rows


# ============================================================================ report


def format_table(rows: Sequence[Row]) -> str:
    head = ("layer", "mode", "dtype", "case", "abs fwd", "rel fwd", "abs bwd", "rel bwd", "")
    body = [
        (
            r.layer,
            r.mode,
            r.dtype,
            r.case,
            f"{r.fwd_abs:.2e}",
            f"{r.fwd_rel:.2e}",
            f"{r.bwd_abs:.2e}",
            f"{r.bwd_rel:.2e}",
            ("PASS" if r.passed else "FAIL") + (f"  ({r.note})" if r.note else ""),
        )
        for r in rows
    ]
    widths = [max(len(str(x[i])) for x in [head, *body]) for i in range(len(head) - 1)]
    lines = []
    for cells in [head, *body]:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + "  " + cells[-1])
    return "\n".join(lines)


def write_json(path: str, rows: Sequence[Row]) -> None:
    """Rows as strict JSON (a non-finite error, which always fails, is written as null)."""

    def clean(row: Row) -> dict[str, Any]:
        return {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in asdict(row).items()
        }

    report = {"passed": all(r.passed for r in rows), "rows": [clean(r) for r in rows]}
    with open(path, "w") as f:
        json.dump(report, f, indent=1, allow_nan=False)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="verify.py",
        description="Compare the Caffe IRG layers and distillation nets with the PyTorch "
        "reference (and a NumPy float64 implementation); exit 1 on any mismatch.",
    )
    p.add_argument("--full", action="store_true", help="every mode x case (default: a subset)")
    p.add_argument("--json", metavar="OUT", help="also write the rows as JSON to OUT")
    p.add_argument("--no-nets", action="store_true", help="skip the whole-net comparisons")
    p.add_argument("--seed", type=int, default=0, help="random inputs (default 0)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("GLOG_minloglevel", "2")
    start = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: extra threads only contend (10x slower on 2 cores)
    try:
        rows = check_layers(args.full, args.seed)
        if not args.no_nets:
            rows.extend(check_nets(args.full, args.seed))
    finally:
        torch.set_num_threads(threads)
    failed = [r for r in rows if not r.passed]
    print(format_table(rows))
    elapsed = time.perf_counter() - start
    print(
        f"\n{len(rows)} comparisons, {len(failed)} failed "
        f"({'full' if args.full else 'quick'} mode, {elapsed:.1f} s)"
    )
    if args.json:
        write_json(args.json, rows)
    if failed:
        print("FAIL: " + "; ".join(f"{r.layer} {r.mode} {r.dtype} {r.case}" for r in failed[:10]))
        return 1
    print("PASS")
    return 0


__all__ = ["Mode", "Row", "check_layers", "check_nets", "main", "numpy_map", "numpy_vector"]
