"""Layer comparisons: Caffe vs PyTorch and NumPy vs PyTorch, per setting and case.

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
compared in full; the Caffe row is compared *tie-agnostically*: the Caffe gradient must be
the constant-``m`` gradient plus ``dL/dm`` times a convex combination of the tied entries'
distance gradients (weights fitted by least squares, then checked to be >= 0 and to sum to
1); the residual is the reported backward error. A float32 computation may break an exact
tie either way, which this accepts and nothing else does.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from pyirg.verify.backends import caffe_layer, torch_layer
from pyirg.verify.cases import CASE_NAMES, Case, map_cases, vector_cases
from pyirg.verify.modes import ALL_MODES, DEFAULT_MODE, LAYERS, Mode
from pyirg.verify.numpy_ref import Reference, numpy_map, numpy_vector
from pyirg.verify.rows import (
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

#: Smallest fitted tie weight still counted as convex (weights sum to 1).
TIE_WEIGHT_SLACK = 1e-3


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
    t_flat = flatten(t_grads)
    note, bwd_ok = "", None
    if len(num.ties) > 1:
        bwd_abs, bwd_rel, weights = tie_agnostic(flatten(c_grads), num, t_flat)
        convex = bool(np.all(weights >= -TIE_WEIGHT_SLACK))
        bwd_ok = convex and bwd_rel <= FLOAT_TOL
        note = "tie-agnostic bwd, weights " + " ".join(f"{w:.3g}" for w in weights)
    else:
        bwd_abs, bwd_rel = errors(flatten(c_grads), t_flat, num.scale[0])
        if num.scale[0] == 0 and bwd_rel > FLOAT_TOL and bwd_abs <= EPS32 * num.scale[1]:
            bwd_ok = True
            note = f"bwd within one float32 rounding of the instances ({EPS32 * num.scale[1]:.1e})"
    caffe_row = make_row(
        layer,
        mode.label,
        CAFFE_ROW,
        case.name,
        errors(c_top, t_top),
        (bwd_abs, bwd_rel),
        FLOAT_TOL,
        note,
        bwd_ok,
    )
    numpy_row = make_row(
        layer,
        mode.label,
        NUMPY_ROW,
        case.name,
        errors(num.top, t_top),
        errors(flatten(num.grads), t_flat, num.scale[0]),
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


def check_layers(full: bool, seed: int) -> list[Row]:
    """Every planned layer comparison; one generator, so a seed fixes the whole run."""
    rows: list[Row] = []
    rng = np.random.default_rng(seed)
    cases = {
        "BatchEuclideanMap": {c.name: c for c in map_cases(rng)},
        "BatchEuclideanVector": {c.name: c for c in vector_cases(rng)},
    }
    for layer, mode, case in layer_plan(full):
        rows.extend(check_layer(layer, mode, cases[layer][case], rng))
    return rows
