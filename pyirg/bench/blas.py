"""The BLAS floor, timed through the very OpenBLAS that libcaffe links (ctypes ``cblas_*``).

Why: a ratio to "the GEMM bound" only means something if the bound runs the same library
and thread pool as ``caffe_cpu_gemm``, not numpy's or scipy's bundled copy.
"""

from __future__ import annotations

import ctypes
import os
import re
import subprocess
from collections.abc import Callable
from typing import Any

import numpy as np


def _loaded_libraries() -> list[str]:
    with open("/proc/self/maps") as f:
        return sorted(
            {line.split()[-1] for line in f if line.rstrip().endswith(".so") or ".so." in line}
        )


def find_caffe_openblas() -> str:
    """Path of the OpenBLAS that libcaffe itself links (not numpy's or scipy's bundled one).

    Caffe must already be imported: libcaffe is located in this process's maps, and its
    ``libopenblas`` dependency resolved with ``ldd``, so the bound is timed with the
    library (and thread pool) that ``caffe_cpu_gemm`` calls.
    """
    loaded = _loaded_libraries()
    libcaffe = next((p for p in loaded if "/libcaffe" in p), None)
    if libcaffe is not None:
        out = subprocess.run(["ldd", libcaffe], capture_output=True, text=True).stdout
        # libopenblas first: libcaffe names it directly (its cblas_* bind there); a libblas
        # line may come from another dependency.
        for pattern in (r"libopenblas[^\s]*\s*=>\s*(\S+)", r"libblas[^\s]*\s*=>\s*(\S+)"):
            match = re.search(pattern, out)
            if match:
                return os.path.realpath(match.group(1))
    for path in loaded:  # fallback: a system OpenBLAS, not a wheel's private copy
        if "openblas" in path and "site-packages" not in path:
            return path
    raise RuntimeError("cannot find the OpenBLAS that libcaffe uses (is caffe imported?)")


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
