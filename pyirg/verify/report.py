"""Report rows, the error measures they hold, and the table and JSON they are written as.

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
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

FLOAT_TOL = 1e-4
DOUBLE_TOL = 1e-9
TINY = float(np.finfo(np.float64).tiny)
EPS32 = float(np.finfo(np.float32).eps)
CAFFE_ROW = "caffe-f32 vs torch-f64"
NUMPY_ROW = "numpy-f64 vs torch-f64"
#: The errors of a comparison that could not be made (a term one side lacks): a FAIL.
MISSING = (math.inf, math.inf)


@dataclass
class Row:
    """One line of the report (errors as defined in this module's docstring)."""

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


def make_row(
    layer: str,
    mode: str,
    dtype: str,
    case: str,
    fwd: tuple[float, float],
    bwd: tuple[float, float],
    tol: float,
    note: str = "",
    bwd_ok: bool | None = None,
    fwd_ok: bool | None = None,
) -> Row:
    """A report row; ``bwd_ok`` and ``fwd_ok`` override the relative-error tests (an
    acceptance the row's note states), the errors shown stay the measured ones."""
    if fwd_ok is None:
        fwd_ok = math.isnan(fwd[1]) or fwd[1] <= tol
    if bwd_ok is None:
        bwd_ok = math.isnan(bwd[1]) or bwd[1] <= tol
    values = (float(fwd[0]), float(fwd[1]), float(bwd[0]), float(bwd[1]))
    return Row(layer, mode, dtype, case, *values, tol, bool(fwd_ok and bwd_ok), note)


def errors(test: np.ndarray, reference: np.ndarray, floor: float = TINY) -> tuple[float, float]:
    """(max abs error, relative error); inf when the test is not finite or shapes differ."""
    test, reference = np.asarray(test, np.float64), np.asarray(reference, np.float64)
    if test.shape != reference.shape or not np.all(np.isfinite(test)):
        return MISSING
    if test.size == 0:
        return 0.0, 0.0
    err = float(np.max(np.abs(test - reference)))
    return err, err / max(float(np.max(np.abs(reference))), floor, TINY)


def flatten(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """All gradients as one float64 vector: the backward error is over them together."""
    return np.concatenate([np.asarray(a, np.float64).ravel() for a in arrays])


def format_table(rows: Sequence[Row]) -> str:
    """Aligned columns, so a failing row and its error stand out among hundreds."""
    head = ("layer", "mode", "dtype", "case", "abs fwd", "rel fwd", "abs bwd", "rel bwd", "")
    body = [
        (r.layer, r.mode, r.dtype, r.case)
        + tuple(f"{e:.2e}" for e in (r.fwd_abs, r.fwd_rel, r.bwd_abs, r.bwd_rel))
        + (("PASS" if r.passed else "FAIL") + (f"  ({r.note})" if r.note else ""),)
        for r in rows
    ]
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head) - 1)]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(cells, widths)) + "  " + cells[-1]
        for cells in [head, *body]
    )


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
