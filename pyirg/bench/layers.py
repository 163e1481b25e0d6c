"""The layer sweep: our Caffe nets, their PyTorch versions and the BLAS bound, side by side.

Why together: every implementation of a size is timed in one interleaved measurement,
so the ratios compare samples taken under the same load; and the one-layer nets live
here because pycaffe 1.0 loads nets from files only (the memory probe and the training
solvers share ``NetFiles``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pyirg.bench.blas import OpenBLAS
from pyirg.bench.config import Settings
from pyirg.bench.timing import Timing, measure


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
