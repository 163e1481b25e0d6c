"""Benchmark of the IRG layers: our Caffe layers against PyTorch, the GEMM bound, and training.

Why this exists: the layers' reason to be (README, "How they compute") is that one GEMM
per pass replaces the authors' N^2 per-pair loop. That claim is only worth something if
it is measured the way a user meets it: a whole pycaffe net's forward + backward, next
to what a competent PyTorch user would write, next to the BLAS time the algorithm
cannot avoid, and as a share of a real distillation iteration. Everything runs in one
process, implementations interleaved per repetition, because the machines we have are
small and shared: a median with its spread from side-by-side samples is comparable,
two runs minutes apart are not.

What is timed (float, CPU):

- ``caffe``: ``net.forward(); net.backward()`` of Input -> layer -> EuclideanLoss against
  a fixed Input target, ``force_backward`` on (the public pycaffe API, so Python's call
  overhead counts as it does for a user);
- ``torch_gram`` / ``torch_cdist`` (map) and ``torch`` (vector): autograd of the same
  forward and loss (``mse_loss(sum) / 2num``, Caffe's EuclideanLoss scaling) with as many
  threads as Caffe's OpenBLAS; the map's "PyTorch" is the faster of the two forms;
- the bound, through the very OpenBLAS that libcaffe links (``cblas_*`` by ctypes): for
  the map the two GEMMs of the algorithm (forward ``X X^T``, backward ``S X``), for the
  vector the bytes it must move (``sdot(x, y)`` forward, ``scopy`` into both diffs
  backward), since it has no GEMM;
- a breakdown of the Caffe net by layer (``net._forward(i, i)`` / ``net._backward(i, i)``)
  the two GEMMs alone, and the three GEMMs PyTorch's Gram form runs (MKL), so a missed
  target can be attributed to BLAS or to the rest;
- training: ``solver.step(1)`` of the paper's IRG, IRG-t and MTK nets (pyirg.distill,
  Input-fed synthetic data) against the same nets stripped of their IRG layers, plus the
  IRG layers' own per-layer time, which resolves far below the noise of end-to-end
  differences on a shared machine.

Run ``python tools/bench.py [--quick] [--out DIR] [--threads N]``: prints the tables and
writes ``bench.json`` (all raw samples, machine, versions), ``bench.md`` (the tables of
docs/benchmarks.md) and ``bench.png``. Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

FULL_N = (64, 128, 256, 512)
FULL_C = (64, 256, 2048)
QUICK_N = (64, 256)
QUICK_C = (64, 256)
TRAIN_METHODS = ("IRG", "IRG-t", "MTK")
IRG_TYPES = frozenset({"BatchEuclideanMap", "BatchEuclideanVector"})
# Parameter-free layers pyirg.distill adds only to feed the IRG layers (pooling of block
# outputs, zero padding); removed with them when nobody reads their tops any more.
HELPER_TYPES = frozenset({"Pooling", "Reduction", "Power", "Slice", "Silence", "Concat"})
FLOAT = 4  # bytes
MAX_INNER = 20000
# Seconds for a thread pool to go idle after its last call (see measure): OpenBLAS's
# workers spin ~2^28 cycles (0.07-0.13 s at 2-4 GHz), libgomp's some ms.
SETTLE_S = {"openblas": 0.2, "torch": 0.05}


class Target(NamedTuple):
    """One target of issue 5: ``metric`` (a ratio of medians) <= ``limit`` where it applies."""

    layer: str
    text: str
    applies: Callable[[int, int], bool]
    metric: str
    limit: float


def _large(n: int, c: int) -> bool:
    return n >= 256 and c >= 256


TARGETS = (
    Target("map", "N>=256, C>=256: ours <= 0.5x PyTorch", _large, "vs_torch", 0.5),
    Target("map", "N>=256, C>=256: ours <= 1.5x GEMM bound", _large, "vs_bound", 1.5),
    Target("map", "every size: ours <= 1.0x PyTorch", lambda n, c: True, "vs_torch", 1.0),
    Target("vector", "N>=256: ours <= 0.5x PyTorch", lambda n, c: n >= 256, "vs_torch", 0.5),
    Target("vector", "every size: ours <= 1.0x PyTorch", lambda n, c: True, "vs_torch", 1.0),
)
TRAIN_TARGET_PCT = 1.0


# ----------------------------------------------------------------------------- timing


@dataclass
class Timing:
    """Seconds per call, one sample per repetition (each the mean of ``inner`` calls)."""

    samples: list[float]
    inner: int = 1

    def q(self, p: float) -> float:
        return float(np.percentile(self.samples, p))

    @property
    def median(self) -> float:
        return self.q(50)

    def plus(self, other: Timing) -> Timing:
        """Repetition-wise sum: samples taken in the same repetition saw the same load."""
        return Timing([a + b for a, b in zip(self.samples, other.samples)], self.inner)

    def summary(self) -> dict[str, Any]:
        ms = [s * 1e3 for s in self.samples]
        return {
            "median_ms": self.median * 1e3,
            "q1_ms": self.q(25) * 1e3,
            "q3_ms": self.q(75) * 1e3,
            "min_ms": min(ms),
            "max_ms": max(ms),
            "inner": self.inner,
            "samples_ms": ms,
        }


def measure(
    fns: dict[str, Callable[[], object]],
    pools: dict[str, str],
    reps: int,
    min_sample_s: float,
    warmup: int,
    settle: dict[str, float],
) -> dict[str, Timing]:
    """Time every function ``reps`` times, interleaved, one sample of each per repetition.

    Interleaving puts every implementation under the same background load. But two thread
    pools share this process and its cores: OpenBLAS's workers spin for about 2^28 cycles
    (~0.1 s) after each call and libgomp's (PyTorch) for some ms, and a pool that finds
    the other one spinning runs many times slower (measured: a 1.3 ms PyTorch step takes
    75-115 ms within 0.1 s of a GEMM). No user runs both in one process, so each sample
    must see only its own pool: functions are grouped by ``pools[name]``, each group runs
    after ``settle[previous pool]`` seconds of sleep (the other pool gone idle) and one
    untimed priming call; the group order and the order inside a group rotate per
    repetition so none always runs first. Fast calls are repeated ``inner`` times per
    sample so a sample lasts ``min_sample_s`` and timer resolution and jitter average out.
    """
    groups: dict[str, list[str]] = {}
    for name in fns:
        groups.setdefault(pools[name], []).append(name)
    order = list(groups)
    last: list[str | None] = [None]

    def enter(pool: str) -> None:
        if last[0] is not None and last[0] != pool:
            time.sleep(settle.get(last[0], 0.0))
        last[0] = pool

    inner = {}
    for pool in order:
        enter(pool)
        for name in groups[pool]:
            fn = fns[name]
            for _ in range(warmup):
                fn()
            t0 = time.perf_counter()
            fn()
            once = max(time.perf_counter() - t0, 1e-7)
            inner[name] = max(1, min(MAX_INNER, int(min_sample_s / once)))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for rep in range(reps):
        k = rep % len(order)
        for pool in order[k:] + order[:k]:
            enter(pool)
            names = groups[pool]
            j = rep % len(names)
            names = names[j:] + names[:j]
            fns[names[0]]()  # priming: wakes this pool, warms the caches after the sleep
            for name in names:
                fn, count = fns[name], inner[name]
                t0 = time.perf_counter()
                for _ in range(count):
                    fn()
                samples[name].append((time.perf_counter() - t0) / count)
    return {name: Timing(samples[name], inner[name]) for name in fns}


# ----------------------------------------------------------------------------- OpenBLAS


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


# ----------------------------------------------------------------------------- nets


class NetFiles:
    """Prototxts written to one temporary folder: pycaffe 1.0 loads nets from files only."""

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="irg-bench-")
        self._count = 0

    def write(self, text: str, stem: str = "net") -> str:
        self._count += 1
        path = Path(self._dir.name) / f"{stem}{self._count}.prototxt"
        path.write_text(text)
        return str(path)

    def close(self) -> None:
        self._dir.cleanup()


def layer_net_text(layer: str, n: int, c: int) -> str:
    """Input(s) -> BatchEuclideanMap/Vector -> EuclideanLoss against an Input target."""
    from caffe import layers as L
    from caffe.net_spec import NetSpec

    ns = NetSpec()
    ns.x = L.Input(shape={"dim": [n, c]})
    if layer == "map":
        ns.t = L.Input(shape={"dim": [n, n, 1, 1]})
        ns.irg = L.BatchEuclideanMap(ns.x)
    else:
        ns.y = L.Input(shape={"dim": [n, c]})
        ns.t = L.Input(shape={"dim": [1, 1, 1, n]})
        ns.irg = L.BatchEuclideanVector(ns.x, ns.y)
    ns.loss = L.EuclideanLoss(ns.irg, ns.t)
    proto = ns.to_proto()
    proto.force_backward = True
    return str(proto)


def target_map(rng: np.random.Generator, n: int) -> np.ndarray:
    """A plausible teacher map: normalized squared distances of other random features."""
    f = rng.standard_normal((n, 16))
    d = ((f[:, None, :] - f[None, :, :]) ** 2).sum(-1)
    return (d / d.max()).astype(np.float32)


# ----------------------------------------------------------------------------- PyTorch


def torch_map(x: Any, target: Any, form: str) -> Callable[[], None]:
    """Map + EuclideanLoss by autograd, as a good PyTorch user writes it.

    ``gram``: ``|x_i|^2 + |x_j|^2 - 2 x_i.x_j`` with one ``addmm``; ``cdist``:
    ``torch.cdist(x, x) ** 2``. ``mse_loss(sum) / 2N`` is EuclideanLoss on an N x N top.
    """
    import torch
    import torch.nn.functional as F

    n = x.shape[0]

    def run() -> None:
        x.grad = None  # what zero_grad(set_to_none=True) does between steps
        if form == "gram":
            sq = (x * x).sum(1)
            d = torch.addmm(sq[:, None] + sq[None, :], x, x.T, alpha=-2).clamp_min(0)
        else:
            d = torch.cdist(x, x).pow(2)
        a = d / d.max()
        (F.mse_loss(a, target, reduction="sum") / (2 * n)).backward()

    return run


def torch_gemms(x: np.ndarray, s: np.ndarray) -> Callable[[], None]:
    """The three GEMMs autograd runs for the Gram form (``x x^T``; ``G x`` and ``G^T x``).

    Not a competitor: it tells how much of a ratio to PyTorch is BLAS (PyTorch's MKL
    against Caffe's OpenBLAS, three GEMMs against our two) and how much is the rest.
    """
    import torch

    xt, st = torch.from_numpy(x.copy()), torch.from_numpy(s.copy())
    gram, dx = torch.empty(x.shape[0], x.shape[0]), torch.empty(x.shape)

    def run() -> None:
        torch.mm(xt, xt.T, out=gram)
        torch.mm(st, xt, out=dx)
        torch.mm(st.T, xt, out=dx)

    return run


def torch_vector(x: Any, y: Any, target: Any) -> Callable[[], None]:
    """Vector + EuclideanLoss by autograd; the 1 x N top makes EuclideanLoss divide by 2."""
    import torch.nn.functional as F

    def run() -> None:
        x.grad = y.grad = None
        d = (x - y).pow(2).sum(1)
        t = d / d.max()
        (F.mse_loss(t, target, reduction="sum") / 2).backward()

    return run


# ----------------------------------------------------------------------------- layer sweep


@dataclass
class Settings:
    """How much to run: sizes, repetitions, and the training comparison."""

    ns: tuple[int, ...]
    cs: tuple[int, ...]
    reps: int
    warmup: int
    min_sample_s: float
    train_methods: tuple[str, ...]
    train_batch: int
    train_warmup: int
    train_reps: int
    attribution_reps: int
    settle: dict[str, float] = field(default_factory=lambda: dict(SETTLE_S))
    quick: bool = False
    transform_pool: str = "Pooling"


def bench_layer(
    layer: str, n: int, c: int, s: Settings, blas: OpenBLAS, files: NetFiles, seed: int
) -> dict[str, Any]:
    """All implementations of one layer at one size, interleaved in one measurement."""
    import caffe
    import torch

    rng = np.random.default_rng(seed)
    net = caffe.Net(files.write(layer_net_text(layer, n, c)), caffe.TRAIN)
    x = rng.standard_normal((n, c)).astype(np.float32)
    net.blobs["x"].data[...] = x
    names = list(net._layer_names)
    i_irg, i_loss = names.index("irg"), names.index("loss")
    fns: dict[str, Callable[[], object]] = {}

    def caffe_step() -> None:
        net.forward()
        net.backward()

    fns["caffe"] = caffe_step
    xt = torch.from_numpy(x.copy()).requires_grad_()
    if layer == "map":
        tgt = target_map(rng, n)
        net.blobs["t"].data[...] = tgt[:, :, None, None]
        tt = torch.from_numpy(tgt)
        fns["torch_gram"] = torch_map(xt, tt, "gram")
        fns["torch_cdist"] = torch_map(xt, tt, "cdist")
        gram, s_mat = np.empty((n, n), np.float32), rng.standard_normal((n, n)).astype(np.float32)
        dx = np.empty((n, c), np.float32)
        fns["bound_fwd"] = blas.gemm(x, x, gram, trans_b=True, alpha=1.0)
        fns["bound_bwd"] = blas.gemm(s_mat, x, dx, trans_b=False, alpha=-2.0)
        fns["torch_gemms"] = torch_gemms(x, s_mat)
        # The ctypes closures hold raw pointers only: the arrays must outlive the timing.
        keep: tuple[object, ...] = (gram, s_mat, dx)
    else:
        y = rng.standard_normal((n, c)).astype(np.float32)
        tgt = rng.random(n).astype(np.float32)
        net.blobs["y"].data[...] = y
        net.blobs["t"].data[...] = tgt.reshape(1, 1, 1, n)
        yt = torch.from_numpy(y.copy()).requires_grad_()
        fns["torch"] = torch_vector(xt, yt, torch.from_numpy(tgt))
        dx, dy = np.empty_like(x), np.empty_like(y)
        fns["bound_fwd"], fns["bound_bwd"] = blas.stream(x, y, dx, dy)
        keep = (y, dx, dy)
    caffe_step()  # every phase below reads what a full step leaves in the blobs
    fns["layer_fwd"] = lambda: net._forward(i_irg, i_irg)
    fns["loss_fwd"] = lambda: net._forward(i_loss, i_loss)
    fns["loss_bwd"] = lambda: net._backward(i_loss, i_loss)
    fns["layer_bwd"] = lambda: net._backward(i_irg, i_irg)
    pools = {name: "torch" if name.startswith("torch") else "openblas" for name in fns}
    timings = measure(fns, pools, s.reps, s.min_sample_s, s.warmup, s.settle)
    del keep
    return {"layer": layer, "n": n, "c": c, "timings": timings, "loadavg_1min": os.getloadavg()[0]}


def torch_best(row: dict[str, Any]) -> tuple[str, Timing]:
    """The map's PyTorch reference is whichever form is faster at that size."""
    t = row["timings"]
    if row["layer"] == "vector":
        return "torch", t["torch"]
    return min(
        (("torch_gram", t["torch_gram"]), ("torch_cdist", t["torch_cdist"])),
        key=lambda kv: kv[1].median,
    )


def ratios(row: dict[str, Any]) -> dict[str, Any]:
    """ours / PyTorch and ours / bound, from medians; paired per-repetition quartiles too."""
    t = row["timings"]
    ours = t["caffe"]
    name, ref = torch_best(row)
    bound = t["bound_fwd"].plus(t["bound_bwd"])
    paired = [a / b for a, b in zip(ours.samples, ref.samples)]
    return {
        "torch_impl": name,
        "vs_torch": ours.median / ref.median,
        "vs_torch_paired_q1_q3": [
            float(np.percentile(paired, 25)),
            float(np.percentile(paired, 75)),
        ],
        "vs_bound": ours.median / bound.median,
        "bound_ms": bound.median * 1e3,
        "bound_kind": "gemm" if row["layer"] == "map" else "stream",
    }


# ----------------------------------------------------------------------------- memory


def layer_extra_bytes(layer: str, n: int) -> dict[str, int]:
    """Bytes each layer holds beyond its top, read off the code (float, CPU).

    Blobs allocate lazily, so only what the code touches counts: the map's ``pairs_``
    (N x N, data only: Gram matrix forward, coefficients backward), ``ones_`` (N, data
    for the ones and diff for the row sums) and ``norm_`` (3 values, data only); the
    vector holds ``norm_`` only.
    """
    norm = 3 * FLOAT
    if layer == "vector":
        return {"norm_": norm, "total": norm}
    pairs, ones = n * n * FLOAT, 2 * n * FLOAT
    return {"pairs_": pairs, "ones_": ones, "norm_": norm, "total": pairs + ones + norm}


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (f, ctypes.c_size_t)
        for f in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _heap_in_use() -> int | None:
    """Bytes malloc has handed out (glibc mallinfo2), None where unavailable."""
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "mallinfo2"):
        return None
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    return int(info.uordblks + info.hblkhd)


def observed_extra_bytes(layer: str, n: int, c: int, files: NetFiles) -> int | None:
    """Heap growth of building and running the layer's net, minus every blob it shows.

    What is left is the layer's internal blobs plus the net's own bookkeeping (layer
    objects, protobuf messages: a few KB); Python's small objects come from pymalloc's
    mmap'ed arenas and do not count. Blob memory is malloc'ed in a CPU-only build.
    """
    import caffe

    path = files.write(layer_net_text(layer, n, c))
    x = np.ones((n, c), np.float32)
    before = _heap_in_use()
    if before is None:
        return None
    net = caffe.Net(path, caffe.TRAIN)
    net.blobs["x"].data[...] = x
    if layer == "vector":
        net.blobs["y"].data[...] = -x
    net.forward()
    net.backward()
    grown = _heap_in_use() - before  # type: ignore[operator]
    # Each blob was read and written both ways (force_backward), and EuclideanLoss keeps
    # its own diff_ (the size of its bottom, data only).
    blobs = sum(2 * b.count * FLOAT for b in net.blobs.values())
    loss_internal = net.blobs["irg"].count * FLOAT
    del net
    return grown - blobs - loss_internal


# ----------------------------------------------------------------------------- training


def strip_irg(net: Any) -> tuple[Any, list[str]]:
    """The same net without its IRG layers, their EuclideanLoss and their helpers.

    Removes every BatchEuclideanMap/Vector, every layer reading one of their tops (the
    losses), then, repeatedly, every parameter-free helper (pooling of block outputs,
    zero padding) whose tops nobody reads any more. ``Pooling1`` feeds the classifier and
    stays; the logits loss is not an IRG layer and stays.
    """
    from caffe.proto import caffe_pb2

    removed: list[str] = []
    dead: set[str] = set()
    kept = []
    for layer in net.layer:
        if layer.type in IRG_TYPES or (layer.type == "EuclideanLoss" and dead & set(layer.bottom)):
            removed.append(layer.name)
            dead.update(layer.top)
        else:
            kept.append(layer)
    changed = True
    while changed:
        changed = False
        read = {b for layer in kept for b in layer.bottom}
        for layer in list(kept):
            if layer.type in HELPER_TYPES and not set(layer.top) & read:
                kept.remove(layer)
                removed.append(layer.name)
                changed = True
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    del out.layer[:]
    out.layer.extend(kept)
    return out, removed


def distill_nets(method: str, batch: int, transform_pool: str = "Pooling") -> Any:
    """The paper's net for ``method`` with Input-fed data (pyirg.distill).

    ``transform_pool``: the authors' global Pooling for IRG-t, or pyirg's Reduction.
    """
    from pyirg.arch import cifar_resnet
    from pyirg.distill import DistillConfig, distill_net
    from pyirg.netspec import DataConfig

    teacher = cifar_resnet(20)
    student = (
        cifar_resnet(14, 0.5, numbering_depth=20) if method == "IRG-t" else cifar_resnet(20, 0.5)
    )
    data = DataConfig(kind="input", train_batch=batch)
    return distill_net(
        DistillConfig.for_method(method, teacher, student, data=data, transform_pool=transform_pool)
    )


def _solver(net_text: str, files: NetFiles, seed: int) -> Any:
    """SGD solver on the net, fed once with synthetic images and labels, sane BN stats."""
    import caffe

    path = files.write(net_text)
    solver_text = (
        f'net: "{path}"\nbase_lr: 0.01\nmomentum: 0.9\nweight_decay: 0.0005\n'
        'lr_policy: "fixed"\nmax_iter: 100000000\ndisplay: 0\nsnapshot: 0\n'
        "snapshot_after_train: false\n"
    )
    solver = caffe.SGDSolver(files.write(solver_text, "solver"))
    net = solver.net
    rng = np.random.default_rng(seed)
    images = net.blobs["Data1"]
    images.data[...] = rng.standard_normal(images.data.shape)
    net.blobs["Data2"].data[...] = rng.integers(0, 10, net.blobs["Data2"].data.shape)
    # A frozen teacher uses its stored statistics; all-zero ones would blow activations up
    # to inf/NaN over 20 layers, and NaN arithmetic is no honest timing.
    for layer in net.layers:
        if layer.type == "BatchNorm":
            layer.blobs[1].data[...] = 1
            layer.blobs[2].data[...] = 1
    return solver


def _per_layer(net: Any, reps: int) -> list[dict[str, float]]:
    """Forward + backward time of every layer, each run alone, ``reps`` times."""
    names = list(net._layer_names)
    out = []
    for _ in range(reps):
        times = dict.fromkeys(names, 0.0)
        for i, name in enumerate(names):
            t0 = time.perf_counter()
            net._forward(i, i)
            times[name] += time.perf_counter() - t0
        for i in reversed(range(len(names))):
            t0 = time.perf_counter()
            net._backward(i, i)
            times[names[i]] += time.perf_counter() - t0
        out.append(times)
    return out


def bench_training(method: str, s: Settings, files: NetFiles) -> dict[str, Any]:
    """Iteration time with and without the IRG layers, and the IRG layers' own time."""
    full_net = distill_nets(method, s.train_batch, s.transform_pool)
    stripped, removed = strip_irg(full_net)
    full, base = _solver(str(full_net), files, 1), _solver(str(stripped), files, 1)
    steps = {"with_irg": lambda: full.step(1), "without_irg": lambda: base.step(1)}
    timings = measure(
        steps, dict.fromkeys(steps, "openblas"), s.train_reps, 0.0, s.train_warmup, s.settle
    )
    layers = _per_layer(full.net, s.attribution_reps)
    irg_times = [sum(t[name] for name in removed) for t in layers]
    all_times = [sum(t.values()) for t in layers]
    # Our layers and their losses, apart from the stock Caffe layers that only feed them
    # (global pooling of block outputs, zero padding): a miss must say which it is.
    types = {layer.name: layer.type for layer in full_net.layer}
    core = [n for n in removed if types[n] in IRG_TYPES or types[n] == "EuclideanLoss"]
    core_med = float(np.median([sum(t[n] for n in core) for t in layers]))
    helper_med = float(np.median([sum(t[n] for n in removed if n not in core) for t in layers]))
    with_t, without_t = timings["with_irg"], timings["without_irg"]
    paired = [a - b for a, b in zip(with_t.samples, without_t.samples)]
    base_med = without_t.median
    losses = {
        k: float(np.asarray(v.data).sum())
        for k, v in full.net.blobs.items()
        if k.endswith("loss") or k.endswith("Loss1")
    }
    return {
        "method": method,
        "batch": s.train_batch,
        "removed_layers": removed,
        "layers_with_irg": len(full_net.layer),
        "layers_without_irg": len(stripped.layer),
        "with_irg": with_t.summary(),
        "without_irg": without_t.summary(),
        "end_to_end_overhead_pct": 100 * (with_t.median - base_med) / base_med,
        "end_to_end_paired_diff_pct_q1_q3": [
            100 * float(np.percentile(paired, p)) / base_med for p in (25, 75)
        ],
        "irg_layers_ms": [1e3 * t for t in irg_times],
        "all_layers_ms": [1e3 * t for t in all_times],
        "attributed_overhead_pct": 100 * float(np.median(irg_times)) / base_med,
        "removed_layer_ms": {
            n: {"type": types[n], "median_ms": 1e3 * float(np.median([t[n] for t in layers]))}
            for n in removed
        },
        "irg_core_ms": 1e3 * core_med,
        "irg_core_overhead_pct": 100 * core_med / base_med,
        "helpers_ms": 1e3 * helper_med,
        "helpers_overhead_pct": 100 * helper_med / base_med,
        "losses_finite": all(math.isfinite(v) for v in losses.values()),
        "losses": losses,
    }


# ----------------------------------------------------------------------------- report


def machine_info(blas: OpenBLAS) -> dict[str, Any]:
    """Where the numbers come from: CPU, cores, memory, load, versions, BLAS and threads."""
    import caffe
    import matplotlib
    import torch

    def first(path: str, key: str) -> str | None:
        try:
            with open(path) as f:
                for line in f:
                    if line.startswith(key):
                        return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return None

    env = {
        k: v for k, v in os.environ.items() if k.startswith(("OPENBLAS_", "OMP_", "MKL_", "GOTO"))
    }
    return {
        "cpu_model": first("/proc/cpuinfo", "model name"),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "mem_total": first("/proc/meminfo", "MemTotal"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {
            "caffe": getattr(caffe, "__version__", "?"),
            "numpy": np.__version__,
            "torch": torch.__version__,
            "matplotlib": matplotlib.__version__,
        },
        "openblas": blas.info(),
        "torch_threads": torch.get_num_threads(),
        "torch_blas": "MKL" if torch.backends.mkl.is_available() else "other",
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "env": env,
        "loadavg_start": os.getloadavg(),
    }


def evaluate_targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every (target, size) it applies to, with the measured value and met/missed."""
    out = []
    for layer, text, applies, metric, limit in TARGETS:
        for row in rows:
            if row["layer"] == layer and applies(row["n"], row["c"]):
                value = row["ratios"][metric]
                out.append(
                    {
                        "layer": layer,
                        "target": text,
                        "n": row["n"],
                        "c": row["c"],
                        "metric": metric,
                        "value": value,
                        "limit": limit,
                        "met": value <= limit,
                    }
                )
    return out


def _fmt(t: Timing) -> str:
    return f"{t.median * 1e3:8.3f} [{t.q(25) * 1e3:.3f}-{t.q(75) * 1e3:.3f}]"


def print_tables(rows: list[dict[str, Any]], out: Any = sys.stdout) -> None:
    """One line per size: medians [IQR] in ms, ratios, and the per-phase breakdown."""
    for layer in ("map", "vector"):
        sel = [r for r in rows if r["layer"] == layer]
        if not sel:
            continue
        refs = ["torch_gram", "torch_cdist"] if layer == "map" else ["torch"]
        head = (
            f"{'N':>4} {'C':>5} | {'caffe ms [IQR]':>24} | "
            + " | ".join(f"{r + ' ms':>24}" for r in refs)
            + f" | {'bound ms':>8} | {'/torch':>6} {'/bound':>6} | "
            "layer fwd  bwd | bound fwd  bwd | loss f+b"
        )
        bound = "GEMM: X X^T + S X" if layer == "map" else "stream: sdot + 2 scopy"
        print(f"\n== {layer} (float, CPU; bound = {bound}) ==", file=out)
        print(head, file=out)
        for r in sel:
            t, q = r["timings"], r["ratios"]
            loss = t["loss_fwd"].median + t["loss_bwd"].median
            print(
                f"{r['n']:>4} {r['c']:>5} | {_fmt(t['caffe']):>24} | "
                + " | ".join(f"{_fmt(t[x]):>24}" for x in refs)
                + f" | {q['bound_ms']:8.3f} | {q['vs_torch']:6.2f} {q['vs_bound']:6.2f} | "
                f"{t['layer_fwd'].median * 1e3:8.3f} {t['layer_bwd'].median * 1e3:7.3f} | "
                f"{t['bound_fwd'].median * 1e3:8.3f} {t['bound_bwd'].median * 1e3:7.3f} | "
                f"{loss * 1e3:7.3f}",
                file=out,
            )


def print_targets(targets: list[dict[str, Any]], out: Any = sys.stdout) -> None:
    print("\n== targets ==", file=out)
    for text in dict.fromkeys(f"{t['layer']}: {t['target']}" for t in targets):
        sel = [t for t in targets if f"{t['layer']}: {t['target']}" == text]
        missed = [t for t in sel if not t["met"]]
        verdict = "MET" if not missed else f"MISSED at {len(missed)}/{len(sel)} sizes"
        print(f"  {text}: {verdict}", file=out)
        for t in missed:
            print(f"    N={t['n']} C={t['c']}: {t['value']:.2f} > {t['limit']}", file=out)


def print_profile(
    rows: list[dict[str, Any]], targets: list[dict[str, Any]], out: Any = sys.stdout
) -> None:
    """For each size with a missed target: where the time goes (ms, medians)."""
    missed = {(t["layer"], t["n"], t["c"]) for t in targets if not t["met"]}
    if not missed:
        return
    print("\n== profile of missed sizes (ms, medians) ==", file=out)
    for r in rows:
        if (r["layer"], r["n"], r["c"]) not in missed:
            continue
        t = {k: v.median * 1e3 for k, v in r["timings"].items()}
        ref = r["ratios"]["torch_impl"]
        phases = t["layer_fwd"] + t["loss_fwd"] + t["loss_bwd"] + t["layer_bwd"]
        print(
            f"  {r['layer']} N={r['n']} C={r['c']}: total {t['caffe']:.3f} = layer fwd "
            f"{t['layer_fwd']:.3f} (bound {t['bound_fwd']:.3f}, rest "
            f"{t['layer_fwd'] - t['bound_fwd']:.3f}) + layer bwd {t['layer_bwd']:.3f} (bound "
            f"{t['bound_bwd']:.3f}, rest {t['layer_bwd'] - t['bound_bwd']:.3f}) + loss "
            f"{t['loss_fwd'] + t['loss_bwd']:.3f} + pycaffe/net {t['caffe'] - phases:.3f}"
            + (
                f"; PyTorch {t[ref]:.3f} ({ref}), of which its 3 GEMMs (MKL) "
                f"{t['torch_gemms']:.3f} vs our 2 (OpenBLAS) {t['bound_fwd'] + t['bound_bwd']:.3f}"
                if "torch_gemms" in t
                else f"; PyTorch {t[ref]:.3f}"
            ),
            file=out,
        )


def print_memory(memory: list[dict[str, Any]], out: Any = sys.stdout) -> None:
    print("\n== extra memory held by each layer beyond its top (bytes, float) ==", file=out)
    for m in memory:
        obs, net = m["observed_residual"], m["observed_minus_baseline"]
        parts = ", ".join(f"{k} {v}" for k, v in m["computed"].items() if k != "total")
        print(
            f"  {m['layer']:>6} N={m['n']:>4}: {m['computed']['total']:>9} computed ({parts}); "
            f"heap residual observed {obs if obs is not None else 'n/a'}"
            + (f", minus the vector net's (bookkeeping): {net}" if net is not None else ""),
            file=out,
        )


def print_training(train: list[dict[str, Any]], out: Any = sys.stdout) -> None:
    if not train:
        return
    print(
        f"\n== training iteration (solver.step(1)), target overhead <= {TRAIN_TARGET_PCT}% ==",
        file=out,
    )
    for t in train:
        w, wo = t["with_irg"], t["without_irg"]
        q1, q3 = t["end_to_end_paired_diff_pct_q1_q3"]
        verdict = "MET" if t["attributed_overhead_pct"] <= TRAIN_TARGET_PCT else "MISSED"
        print(
            f"  {t['method']:>5} batch {t['batch']}: with {w['median_ms']:.1f} ms "
            f"[{w['q1_ms']:.1f}-{w['q3_ms']:.1f}], without {wo['median_ms']:.1f} ms "
            f"[{wo['q1_ms']:.1f}-{wo['q3_ms']:.1f}]; "
            f"end-to-end {t['end_to_end_overhead_pct']:+.2f}%"
            f" (paired IQR {q1:+.2f}..{q3:+.2f}%); IRG layers' own time "
            f"{np.median(t['irg_layers_ms']):.3f} ms = {t['attributed_overhead_pct']:.3f}% "
            f"-> {verdict}",
            file=out,
        )
        print(
            f"        of which BatchEuclidean* + their losses {t['irg_core_ms']:.3f} ms "
            f"({t['irg_core_overhead_pct']:.3f}%), helpers (pooling, padding) "
            f"{t['helpers_ms']:.3f} ms ({t['helpers_overhead_pct']:.3f}%)",
            file=out,
        )


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Time vs N, log-log, one panel per C; map on top, vector below; bars are the IQR."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cs = sorted({r["c"] for r in rows})
    layers = [x for x in ("map", "vector") if any(r["layer"] == x for r in rows)]
    fig, axes = plt.subplots(
        len(layers), len(cs), figsize=(4.2 * len(cs), 3.6 * len(layers)), squeeze=False
    )
    series = {
        "map": [
            ("caffe", "ours (Caffe)"),
            ("torch_gram", "PyTorch gram"),
            ("torch_cdist", "PyTorch cdist"),
            ("bound", "GEMM bound"),
        ],
        "vector": [("caffe", "ours (Caffe)"), ("torch", "PyTorch"), ("bound", "stream floor")],
    }
    for i, layer in enumerate(layers):
        for j, c in enumerate(cs):
            ax = axes[i][j]
            sel = sorted(
                (r for r in rows if r["layer"] == layer and r["c"] == c), key=lambda r: r["n"]
            )
            for key, label in series[layer]:
                ts = [
                    r["timings"]["bound_fwd"].plus(r["timings"]["bound_bwd"])
                    if key == "bound"
                    else r["timings"][key]
                    for r in sel
                ]
                med = np.array([t.median for t in ts]) * 1e3
                lo = med - np.array([t.q(25) for t in ts]) * 1e3
                hi = np.array([t.q(75) for t in ts]) * 1e3 - med
                ax.errorbar(
                    [r["n"] for r in sel],
                    med,
                    yerr=[lo, hi],
                    marker="o",
                    capsize=3,
                    label=label,
                    linestyle="--" if key == "bound" else "-",
                )
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{layer}, C = {c}")
            ax.set_xlabel("N (instances)")
            ax.set_ylabel("forward + backward (ms)")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def to_json(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "layer": r["layer"],
            "n": r["n"],
            "c": r["c"],
            "loadavg_1min": r["loadavg_1min"],
            "ratios": r["ratios"],
            "timings": {k: v.summary() for k, v in r["timings"].items()},
        }
        for r in rows
    ]


def _cell(t: dict[str, Any]) -> str:
    return f"{t['median_ms']:.3f} ({t['q1_ms']:.3f}-{t['q3_ms']:.3f})"


def markdown(result: dict[str, Any]) -> str:
    """The tables of docs/benchmarks.md, from a bench.json dict (so none is hand-copied)."""
    meta, lines = result["meta"], []
    ob = meta["openblas"]
    lines += [
        f"Machine: {meta['cpu_model']}, {meta['cpus_usable']} usable cores of "
        f"{meta['cpu_count']}, {meta['mem_total']}; {meta['platform']}; Python "
        f"{meta['python']}; Caffe {meta['versions']['caffe']}, OpenBLAS `{ob['config']}` "
        f"(core {ob['corename']}), {result['threads']} BLAS threads; PyTorch "
        f"{meta['versions']['torch']} ({meta['torch_blas']}, {meta['torch_cpu_capability']}), "
        f"{meta['torch_threads']} threads; environment {meta['env'] or '{}'}; load average "
        f"{meta['loadavg_start'][0]:.2f} at the start, {meta['loadavg_end'][0]:.2f} at the end; "
        f"{meta['wall_s']:.0f} s.",
        "",
    ]
    for layer in ("map", "vector"):
        rows = [r for r in result["layers"] if r["layer"] == layer]
        if not rows:
            continue
        refs = ["torch_gram", "torch_cdist"] if layer == "map" else ["torch"]
        bound = "GEMM bound" if layer == "map" else "stream floor"
        lines += [
            f"**{layer}**: forward + backward, ms, median (IQR)",
            "",
            "| N | C | ours (Caffe) | "
            + " | ".join(f"PyTorch {r[6:] or 'autograd'}" for r in refs)
            + f" | {bound} | ours / PyTorch | ours / {bound} | layer fwd | layer bwd |",
            "|---:|---:|---:|" + "---:|" * len(refs) + "---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            t, q = r["timings"], r["ratios"]
            lines.append(
                f"| {r['n']} | {r['c']} | {_cell(t['caffe'])} | "
                + " | ".join(_cell(t[x]) for x in refs)
                + f" | {q['bound_ms']:.3f} | {q['vs_torch']:.2f} | {q['vs_bound']:.2f} | "
                f"{t['layer_fwd']['median_ms']:.3f} | {t['layer_bwd']['median_ms']:.3f} |"
            )
        lines.append("")
    lines += ["**targets**", "", "| target | met at | missed at (value) |", "|---|---|---|"]
    groups: dict[str, list[dict[str, Any]]] = {}
    for t in result["targets"]:
        groups.setdefault(f"{t['layer']}: {t['target']}", []).append(t)
    for text, ts in groups.items():
        met = [t for t in ts if t["met"]]
        missed = ", ".join(
            f"{t['n']}x{t['c']} ({t['value']:.2f})" if t["c"] is not None else f"{t['value']:.2f}"
            for t in ts
            if not t["met"]
        )
        lines.append(f"| {text} | {len(met)} of {len(ts)} | {missed or '-'} |")
    lines.append("")
    if result["training"]:
        lines += [
            "**training iteration** (`solver.step(1)`, ms, median (IQR))",
            "",
            "| method | batch | with IRG | without | end-to-end diff (paired IQR) | IRG layers' "
            "own time | of which BatchEuclidean* + losses | helpers (pooling) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for t in result["training"]:
            q1, q3 = t["end_to_end_paired_diff_pct_q1_q3"]
            lines.append(
                f"| {t['method']} | {t['batch']} | {_cell(t['with_irg'])} | "
                f"{_cell(t['without_irg'])} | {t['end_to_end_overhead_pct']:+.2f}% "
                f"({q1:+.2f}..{q3:+.2f}%) | {t['attributed_overhead_pct']:.3f}% | "
                f"{t['irg_core_ms']:.3f} ms ({t['irg_core_overhead_pct']:.3f}%) | "
                f"{t['helpers_ms']:.3f} ms ({t['helpers_overhead_pct']:.3f}%) |"
            )
        lines.append("")
    lines += [
        "**extra memory beyond the top** (bytes, float)",
        "",
        "| layer | N | from the code | parts | heap residual observed | minus the vector net's |",
        "|---|---:|---:|---|---:|---:|",
    ]
    for m in result["memory"]:
        parts = ", ".join(f"`{k}` {v}" for k, v in m["computed"].items() if k != "total")
        net = m["observed_minus_baseline"]
        lines.append(
            f"| {m['layer']} | {m['n']} | {m['computed']['total']} | {parts} | "
            f"{m['observed_residual']} | {net if net is not None else '-'} |"
        )
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- CLI


def settings(args: argparse.Namespace) -> Settings:
    if args.quick:
        s = Settings(
            QUICK_N,
            QUICK_C,
            reps=3,
            warmup=1,
            min_sample_s=0.002,
            train_methods=("IRG",),
            train_batch=16,
            train_warmup=1,
            train_reps=2,
            attribution_reps=1,
            quick=True,
        )
    else:
        s = Settings(
            FULL_N,
            FULL_C,
            reps=15,
            warmup=3,
            min_sample_s=0.02,
            train_methods=TRAIN_METHODS,
            train_batch=64,
            train_warmup=2,
            train_reps=12,
            attribution_reps=5,
        )
    if args.reps:
        s.reps = args.reps
    if args.skip_train:
        s.train_methods = ()
    if args.train_only:
        s.ns, s.cs = (), ()
    s.transform_pool = args.transform_pool
    return s


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench.py",
        description="Benchmark the IRG Caffe layers against PyTorch, the GEMM bound, and "
        "their share of a distillation training iteration.",
    )
    p.add_argument("--quick", action="store_true", help="a few sizes, seconds (for tests)")
    p.add_argument(
        "--out",
        type=Path,
        default=Path("out/bench"),
        help="folder for bench.json and bench.png (default: out/bench)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="BLAS threads for Caffe's OpenBLAS and PyTorch (default: OpenBLAS's "
        "own count: OPENBLAS_NUM_THREADS or the cores)",
    )
    p.add_argument("--reps", type=int, default=None, help="repetitions per size")
    p.add_argument(
        "--skip-train", action="store_true", help="leave out the training-iteration comparison"
    )
    p.add_argument(
        "--train-only", action="store_true", help="only the training-iteration comparison"
    )
    p.add_argument(
        "--transform-pool",
        choices=("Pooling", "Reduction"),
        default="Pooling",
        help="how the IRG-t nets average block outputs (default: the authors' Pooling)",
    )
    args = p.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be >= 1")
    if args.reps is not None and args.reps < 1:
        p.error("--reps must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    os.environ.setdefault("GLOG_minloglevel", "2")
    import caffe  # first: its OpenBLAS is the one the bound must use

    caffe.set_mode_cpu()
    import torch

    s = settings(args)
    blas = OpenBLAS(find_caffe_openblas())
    if args.threads is not None:
        blas.set_threads(args.threads)
    threads = blas.threads
    torch.set_num_threads(threads)
    meta = machine_info(blas)
    print(
        f"CPU {meta['cpu_model']} ({meta['cpus_usable']} usable of {meta['cpu_count']}); "
        f"OpenBLAS {meta['openblas']['corename']} x{threads} threads "
        f"({meta['openblas']['path']}); torch {torch.__version__} x{torch.get_num_threads()} "
        f"({meta['torch_blas']}); load {meta['loadavg_start']}"
    )
    files = NetFiles()
    started = time.time()
    try:
        rows = []
        for layer in ("map", "vector"):
            for c in s.cs:
                for n in s.ns:
                    row = bench_layer(layer, n, c, s, blas, files, seed=n * 7919 + c)
                    row["ratios"] = ratios(row)
                    rows.append(row)
                    print(
                        f"  {layer:>6} N={n:>4} C={c:>5}: caffe "
                        f"{row['timings']['caffe'].median * 1e3:.3f} ms, "
                        f"/torch {row['ratios']['vs_torch']:.2f}, "
                        f"/bound {row['ratios']['vs_bound']:.2f}",
                        flush=True,
                    )
        memory = []
        for layer in ("map", "vector"):
            for n in s.ns:
                memory.append(
                    {
                        "layer": layer,
                        "n": n,
                        "computed": layer_extra_bytes(layer, n),
                        "observed_residual": observed_extra_bytes(layer, n, 64, files),
                    }
                )
        baseline = {m["n"]: m["observed_residual"] for m in memory if m["layer"] == "vector"}
        for m in memory:
            # The vector layer holds 12 bytes, so its net's residual is the bookkeeping
            # baseline; the map's residual minus it is the map layer's own memory.
            obs, base = m["observed_residual"], baseline.get(m["n"])
            m["observed_minus_baseline"] = (
                obs - base if m["layer"] == "map" and obs is not None and base is not None else None
            )
        train = []
        for method in s.train_methods:
            print(f"  training: {method} ...", flush=True)
            train.append(bench_training(method, s, files))
    finally:
        files.close()
    targets = evaluate_targets(rows)
    for t in train:
        targets.append(
            {
                "layer": "training",
                "target": f"{t['method']}: overhead <= "
                f"{TRAIN_TARGET_PCT}% (IRG layers' own time / iteration without them)",
                "n": t["batch"],
                "c": None,
                "metric": "attributed_overhead_pct",
                "value": t["attributed_overhead_pct"],
                "limit": TRAIN_TARGET_PCT,
                "met": t["attributed_overhead_pct"] <= TRAIN_TARGET_PCT,
            }
        )
    print_tables(rows)
    print_targets(targets)
    print_profile(rows, targets)
    print_memory(memory)
    print_training(train)
    meta["loadavg_end"] = os.getloadavg()
    meta["wall_s"] = time.time() - started
    args.out.mkdir(parents=True, exist_ok=True)
    result = {
        "meta": meta,
        "settings": {k: getattr(s, k) for k in Settings.__dataclass_fields__},
        "threads": threads,
        "layers": to_json(rows),
        "targets": targets,
        "memory": memory,
        "training": train,
    }
    (args.out / "bench.json").write_text(json.dumps(result, indent=1))
    (args.out / "bench.md").write_text(markdown(json.loads(json.dumps(result))))
    if rows:
        plot(rows, args.out / "bench.png")
    print(f"\nwrote bench.json, bench.md, bench.png in {args.out} ({meta['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
