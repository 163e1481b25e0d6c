"""Extra memory each layer holds beyond its top: computed from the code, and observed.

Why both: the computed figure is the claim (the map needs N x N floats, the vector
nothing); the heap residual of a real net checks it against what malloc saw.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

from pyirg.bench.layers import NetFiles, layer_net_text

FLOAT = 4  # bytes


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


def memory_rows(ns: tuple[int, ...], files: NetFiles) -> list[dict[str, Any]]:
    """Computed and observed extra bytes of both layers at every N, observed also net of
    the bookkeeping that every net carries.
    """
    memory = []
    for layer in ("map", "vector"):
        for n in ns:
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
    return memory
