"""The BLAS side of the benchmark: the bound through libcaffe's own OpenBLAS, and which
BLAS library or kernel Caffe's convolutions would run fastest on.

Why through libcaffe's OpenBLAS: a ratio to "the GEMM bound" only means something if the
bound runs the same library and thread pool as ``caffe_cpu_gemm``, not numpy's or
scipy's bundled copy. :func:`pyirg.blas.caffe_openblas` finds it (threadpoolctl's record
of the library libcaffe links); threadpoolctl also sets its threads. The ``cblas_*``
calls go through ctypes because no Python binding reaches that library.
"""

from __future__ import annotations

import ctypes
import glob
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112


class Cblas:
    """The few ``cblas_*`` calls the bounds need, on one BLAS library, and its thread pool."""

    def __init__(self, path: str) -> None:
        self.path = os.path.realpath(path)
        self.lib = ctypes.CDLL(self.path)
        self.lib.cblas_sdot.restype = ctypes.c_float
        i, f, p = ctypes.c_int, ctypes.c_float, ctypes.c_void_p
        self.lib.cblas_sgemm.argtypes = [i, i, i, i, i, i, f, p, i, p, i, f, p, i]
        self.lib.cblas_sdot.argtypes = [i, p, i, p, i]
        self.lib.cblas_scopy.argtypes = [i, p, i, p, i]

    def pool(self) -> Any:
        """threadpoolctl's handle on this library alone (not numpy's or torch's pools)."""
        from threadpoolctl import ThreadpoolController

        ctl = ThreadpoolController()
        names = [
            c.filepath for c in ctl.lib_controllers if os.path.realpath(c.filepath) == self.path
        ]
        return ctl.select(filepath=names)

    def limit_threads(self, n: int) -> None:
        """Set this library's threads for the rest of the process: every part of the run
        (Caffe's nets, the bound, the training steps) must see the same pool."""
        self.pool().limit(limits=n)

    def info(self) -> dict[str, Any]:
        """Path, build configuration, kernel and threads (an OpenBLAS), as bench.json has it."""
        (now,) = self.pool().info()
        self.lib.openblas_get_config.restype = ctypes.c_char_p
        return {
            "path": self.path,
            "config": self.lib.openblas_get_config().decode(),
            "corename": now["architecture"],
            "threads": now["num_threads"],
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


def caffe_cblas() -> Cblas:
    """The OpenBLAS libcaffe links, as :func:`pyirg.blas.caffe_openblas` finds it."""
    from pyirg.blas import caffe_blas_path, caffe_openblas

    info = caffe_openblas()
    if info is None:
        path = caffe_blas_path()
        raise RuntimeError(f"libcaffe's BLAS is not OpenBLAS ({path}); the bound needs it")
    return Cblas(info["filepath"])


# -- which BLAS for Caffe's convolutions ------------------------------------------------


def time_gemms(path: str, shapes: list[list[int]], reps: int) -> dict[str, Any]:
    """Best time of each GEMM [M, N, K, count] with the library at ``path``, one thread,
    and its error against float64; run by :func:`blas_choice` in a fresh process."""
    lib = Cblas(path)
    (info,) = lib.pool().info()
    lib.limit_threads(1)
    rng = np.random.default_rng(0)
    gemms = []
    for m, n, k, count in shapes:
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        c = np.zeros((m, n), np.float32)
        call = lib.gemm(a, b, c, trans_b=False, alpha=1.0)
        call()
        inner = max(1, int(2e7 / (m * n * k)))
        best = float("inf")
        for _ in range(reps):
            t = time.perf_counter()
            for _ in range(inner):
                call()
            best = min(best, (time.perf_counter() - t) / inner)
        err = float(np.abs(c - a.astype(np.float64) @ b).max() / max(1.0, np.abs(c).max()))
        gemms.append({"m": m, "n": n, "k": k, "count": count, "s": best, "err": err})
    name = "MKL" if info["internal_api"] == "mkl" else f"OpenBLAS {info['architecture']}"
    return {"library": name, "path": path, "gemms": gemms}


def conv_gemms(spec: Any, height: int) -> list[list[int]]:
    """Caffe's im2col GEMMs [M, N, K, count] for one image through every convolution of
    ``spec`` (a :class:`pyirg.arch.ResNetSpec`): forward and both backward products."""
    counts: dict[tuple[int, int, int], int] = {}

    def add(conv: Any, size: int) -> int:
        out = (size + 2 * conv.pad - conv.kernel) // conv.stride + 1
        k, hw = conv.in_channels * conv.kernel * conv.kernel, out * out
        # forward W x col; weight gradient top x col^T; data gradient W^T x top
        o = conv.out_channels
        for shape in ((o, hw, k), (o, k, hw), (k, hw, o)):
            counts[shape] = counts.get(shape, 0) + 1
        return out

    size = add(spec.stem, height)
    for block in spec.blocks:
        if block.proj is not None:
            add(block.proj, size)
        size = add(block.conv_b, add(block.conv_a, size))
    return [[m, n, k, c] for (m, n, k), c in counts.items()]


def find_mkl() -> str | None:
    """libmkl_rt from a ``pip install mkl``: under MKL_PREFIX, else this interpreter's prefix."""
    for prefix in dict.fromkeys((os.environ.get("MKL_PREFIX", ""), sys.prefix, sys.base_prefix)):
        found = sorted(glob.glob(os.path.join(prefix, "lib", "libmkl_rt.so*"))) if prefix else []
        if found:
            return found[0]
    return None


def blas_choice(blas: Cblas, reps: int) -> list[dict[str, Any]]:
    """Caffe's ResNet-20 convolution GEMMs timed with each OpenBLAS kernel this CPU can run
    (each in its own process: the kernel is fixed at load) and with MKL if installed."""
    from pyirg.arch import cifar_resnet
    from pyirg.blas import CORETYPE_ENV, KERNEL_TIERS, read_cpuinfo

    vendor, _, flags = read_cpuinfo()
    in_use = blas.info()["corename"]
    runnable = [
        name for name, needs, only in KERNEL_TIERS if needs <= flags and only in (None, vendor)
    ]
    libraries = [(blas.path, {CORETYPE_ENV: k}) for k in dict.fromkeys([in_use, *runnable])]
    mkl = find_mkl()
    if mkl:
        libraries.append((mkl, {"MKL_NUM_THREADS": "1"}))
    shapes = json.dumps(conv_gemms(cifar_resnet(20, 1.0, 10, 3), 32))
    # The package root on the path: a checkout's tools/bench.py runs pyirg uninstalled.
    root = str(Path(__file__).resolve().parents[2])
    pythonpath = os.pathsep.join(filter(None, (root, os.environ.get("PYTHONPATH"))))
    rows: list[dict[str, Any]] = []
    for path, extra in libraries:
        proc = subprocess.run(
            [sys.executable, "-m", "pyirg.bench.blas", path, shapes, str(reps)],
            capture_output=True,
            text=True,
            env=dict(os.environ, PYTHONPATH=pythonpath, **extra),
        )
        if proc.returncode:
            rows.append({"library": path, "error": proc.stderr.strip()[-300:], "chosen": False})
            continue
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        row["per_image_s"] = sum(g["s"] * g["count"] for g in row["gemms"])
        row["chosen"] = row["library"] == f"OpenBLAS {in_use}"
        rows.append(row)
    return rows


if __name__ == "__main__":  # one library's GEMMs, in the fresh process blas_choice starts
    if len(sys.argv) != 4:
        sys.exit("usage: python -m pyirg.bench.blas LIBRARY GEMMS_JSON REPS (run by pyirg bench)")
    print(json.dumps(time_gemms(sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]))))
