"""The BLAS floor, timed through the very OpenBLAS that libcaffe links (ctypes ``cblas_*``).

Why: a ratio to "the GEMM bound" only means something if the bound runs the same library
and thread pool as ``caffe_cpu_gemm``, not numpy's or scipy's bundled copy.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
from collections.abc import Callable
from typing import Any

import numpy as np


def find_caffe_openblas() -> str:
    """Path of the OpenBLAS that libcaffe itself links (:func:`pyirg.blas.caffe_blas_path`),
    so the bound is timed with the library (and thread pool) ``caffe_cpu_gemm`` calls."""
    from pyirg.blas import caffe_blas_path

    path = caffe_blas_path()
    if path is None or "openblas" not in os.path.basename(path):
        raise RuntimeError(f"libcaffe's BLAS is not OpenBLAS ({path}); the bound needs it")
    return path


_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112


class OpenBLAS:
    """The few cblas calls the bounds need, on the library libcaffe uses."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lib = ctypes.CDLL(path)
        self.lib.openblas_get_config.restype = ctypes.c_char_p
        self.lib.openblas_get_corename.restype = ctypes.c_char_p
        self.lib.openblas_get_num_threads.restype = ctypes.c_int
        self.lib.cblas_sdot.restype = ctypes.c_float
        i, f, p = ctypes.c_int, ctypes.c_float, ctypes.c_void_p
        self.lib.cblas_sgemm.argtypes = [i, i, i, i, i, i, f, p, i, p, i, f, p, i]
        self.lib.cblas_sdot.argtypes = [i, p, i, p, i]
        self.lib.cblas_scopy.argtypes = [i, p, i, p, i]

    @property
    def threads(self) -> int:
        return int(self.lib.openblas_get_num_threads())

    def set_threads(self, n: int) -> None:
        self.lib.openblas_set_num_threads(ctypes.c_int(n))

    def info(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "config": self.lib.openblas_get_config().decode(),
            "corename": self.lib.openblas_get_corename().decode(),
            "threads": self.threads,
        }

    def gemm(
        self, a: np.ndarray, b: np.ndarray, c: np.ndarray, trans_b: bool, alpha: float
    ) -> Callable[[], None]:
        """``c = alpha a op(b)`` row-major with Caffe's leading dimensions (caffe_cpu_gemm)."""
        m, k = a.shape
        n = c.shape[1]
        ldb = k if trans_b else n
        tb = _TRANS if trans_b else _NO_TRANS
        pa, pb, pc = a.ctypes.data, b.ctypes.data, c.ctypes.data
        sgemm = self.lib.cblas_sgemm
        return lambda: sgemm(_ROW_MAJOR, _NO_TRANS, tb, m, n, k, alpha, pa, k, pb, ldb, 0.0, pc, n)

    def stream(
        self, x: np.ndarray, y: np.ndarray, dx: np.ndarray, dy: np.ndarray
    ) -> tuple[Callable[[], None], Callable[[], None]]:
        """(read x and y once; write both diffs once): the vector layer's memory traffic."""
        n = x.size
        px, py, pdx, pdy = x.ctypes.data, y.ctypes.data, dx.ctypes.data, dy.ctypes.data
        dot, copy = self.lib.cblas_sdot, self.lib.cblas_scopy

        def backward() -> None:
            copy(n, px, 1, pdx, 1)
            copy(n, py, 1, pdy, 1)

        return (lambda: dot(n, px, 1, py, 1)), backward


# -- which BLAS for Caffe's convolutions ------------------------------------------------

#: Times Caffe's convolution GEMMs with one BLAS library in a fresh process, one thread:
#: the kernel (OPENBLAS_CORETYPE) is fixed when the library loads, so each candidate
#: needs its own process. argv: library path, JSON list of [M, N, K, count], reps.
_GEMM_PROBE = r"""
import ctypes, json, sys, time
import numpy as np
path, shapes, reps = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
lib = ctypes.CDLL(path)
if "mkl" in path:
    lib.MKL_Set_Num_Threads(1)
    name = "MKL"
else:
    lib.openblas_set_num_threads(1)
    lib.openblas_get_corename.restype = ctypes.c_char_p
    name = "OpenBLAS " + lib.openblas_get_corename().decode()
i, f, p = ctypes.c_int, ctypes.c_float, ctypes.c_void_p
lib.cblas_sgemm.argtypes = [i, i, i, i, i, i, f, p, i, p, i, f, p, i]
rng = np.random.default_rng(0)
out = []
for m, n, k, count in shapes:
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    c = np.zeros((m, n), np.float32)
    inner = max(1, int(2e7 / (m * n * k)))
    call = lambda: lib.cblas_sgemm(101, 111, 111, m, n, k, 1.0, a.ctypes.data, k,
                                   b.ctypes.data, n, 0.0, c.ctypes.data, n)
    call()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        for _ in range(inner):
            call()
        best = min(best, (time.perf_counter() - t) / inner)
    err = float(np.abs(c - a.astype(np.float64) @ b).max() / max(1.0, np.abs(c).max()))
    out.append({"m": m, "n": n, "k": k, "count": count, "s": best, "err": err})
print(json.dumps({"library": name, "path": path, "gemms": out}))
"""


def conv_gemms(spec: Any, height: int) -> list[list[int]]:
    """Caffe's im2col GEMMs [M, N, K, count] for one image through every convolution of
    ``spec`` (a :class:`pyirg.arch.ResNetSpec`): forward and both backward products."""
    counts: dict[tuple[int, int, int], int] = {}

    def add(conv: Any, size: int) -> int:
        out = (size + 2 * conv.pad - conv.kernel) // conv.stride + 1
        k, hw = conv.in_channels * conv.kernel * conv.kernel, out * out
        # forward W x col; weight gradient top x col^T; data gradient W^T x top
        for shape in (
            (conv.out_channels, hw, k),
            (conv.out_channels, k, hw),
            (k, hw, conv.out_channels),
        ):
            counts[shape] = counts.get(shape, 0) + 1
        return out

    size = add(spec.stem, height)
    for block in spec.blocks:
        if block.proj is not None:
            add(block.proj, size)
        size = add(block.conv_b, add(block.conv_a, size))
    return [[m, n, k, c] for (m, n, k), c in counts.items()]


def compare_blas(
    libraries: list[tuple[str, dict[str, str]]], shapes: list[list[int]], reps: int
) -> list[dict[str, Any]]:
    """Run the GEMM probe once per (library path, extra environment); one result each."""
    import json
    import sys

    results = []
    for path, extra in libraries:
        env = dict(os.environ, **extra)
        proc = subprocess.run(
            [sys.executable, "-c", _GEMM_PROBE, path, json.dumps(shapes), str(reps)],
            capture_output=True,
            text=True,
            env=env,
        )
        if proc.returncode:
            results.append({"library": path, "error": proc.stderr.strip()[-300:]})
            continue
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        row["per_image_s"] = sum(g["s"] * g["count"] for g in row["gemms"])
        results.append(row)
    return results


def find_mkl() -> str | None:
    """libmkl_rt from a ``pip install mkl`` (this interpreter's prefix), if there is one."""
    import glob
    import sys

    for prefix in dict.fromkeys((os.environ.get("MKL_PREFIX", ""), sys.prefix, sys.base_prefix)):
        if prefix:
            found = sorted(glob.glob(os.path.join(prefix, "lib", "libmkl_rt.so*")))
            if found:
                return found[0]
    return None
