"""The loss layers' share of a real training iteration (``solver.step(1)``).

Why: a fast layer matters only as a share of training. End-to-end differences drown in
the noise of a shared machine, so the layers' own per-layer time is measured too: the
IRG layers' against the same distillation nets with them stripped, each REFILLED
layer's against its stage net's iteration (WRN teacher -> WRN student, :mod:`pyirg.refilled`).
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from pyirg.bench.layers import CENTER, TRIPLET
from pyirg.bench.timing import Settings, measure
from pyirg.caffeio import write_text
from pyirg.distill import IRG_TYPES

# Parameter-free layers pyirg.distill adds only to feed the IRG layers (pooling of block
# outputs, zero padding); removed with them when nobody reads their tops any more.
HELPER_TYPES = frozenset({"Pooling", "Reduction", "Power", "Slice", "Silence", "Concat"})


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


def _solver(net_param: Any, seed: int) -> Any:
    """SGD solver on the net, fed once with synthetic images and labels, sane BN stats.

    pycaffe reads solvers and nets from files only; Caffe parses both while the solver
    is built, so the files need not outlive it.
    """
    import caffe

    with tempfile.TemporaryDirectory(prefix="irg-bench-") as tmp:
        net_path, solver_path = Path(tmp, "net.prototxt"), Path(tmp, "solver.prototxt")
        write_text(net_path, net_param)
        solver_path.write_text(
            f'net: "{net_path}"\nbase_lr: 0.01\nmomentum: 0.9\nweight_decay: 0.0005\n'
            'lr_policy: "fixed"\nmax_iter: 100000000\ndisplay: 0\nsnapshot: 0\n'
            "snapshot_after_train: false\n"
        )
        solver = caffe.SGDSolver(str(solver_path))
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


def bench_training(method: str, s: Settings) -> dict[str, Any]:
    """Iteration time with and without the IRG layers, and the IRG layers' own time."""
    full_net = distill_nets(method, s.train_batch, s.transform_pool)
    stripped, removed = strip_irg(full_net)
    full, base = _solver(full_net, 1), _solver(stripped, 1)
    steps = {"with_irg": lambda: full.step(1), "without_irg": lambda: base.step(1)}
    timings = measure(
        steps, dict.fromkeys(steps, "openblas"), s.train_reps, 0.0, s.train_warmup, s.settle
    )
    with_t, without_t = timings["with_irg"], timings["without_irg"]
    base_ms = 1e3 * without_t.median
    layers = [{k: 1e3 * v for k, v in t.items()} for t in _per_layer(full.net, s.attribution_reps)]
    # Our layers and their losses, apart from the stock Caffe layers that only feed them
    # (global pooling of block outputs, zero padding): a miss must say which it is.
    types = {layer.name: layer.type for layer in full_net.layer}
    core = {n for n in removed if types[n] in IRG_TYPES or types[n] == "EuclideanLoss"}
    irg_ms = [sum(t[n] for n in removed) for t in layers]
    core_ms = float(np.median([sum(t[n] for n in core) for t in layers]))
    helpers_ms = float(np.median([sum(t[n] for n in removed if n not in core) for t in layers]))
    paired = [1e3 * (a - b) for a, b in zip(with_t.samples, without_t.samples)]
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
        "end_to_end_overhead_pct": 100 * (1e3 * with_t.median - base_ms) / base_ms,
        "end_to_end_paired_diff_pct_q1_q3": [
            100 * float(np.percentile(paired, p)) / base_ms for p in (25, 75)
        ],
        "irg_layers_ms": irg_ms,
        "all_layers_ms": [sum(t.values()) for t in layers],
        "attributed_overhead_pct": 100 * float(np.median(irg_ms)) / base_ms,
        "removed_layer_ms": {
            n: {"type": types[n], "median_ms": float(np.median([t[n] for t in layers]))}
            for n in removed
        },
        "irg_core_ms": core_ms,
        "irg_core_overhead_pct": 100 * core_ms / base_ms,
        "helpers_ms": helpers_ms,
        "helpers_overhead_pct": 100 * helpers_ms / base_ms,
        "losses_finite": all(math.isfinite(v) for v in losses.values()),
        "losses": losses,
    }


def stage_config(s: Settings) -> Any:
    """The stage nets' teacher -> student pair on CIFAR-100-shaped Input data."""
    from pyirg.backbones import WideResNetSpec
    from pyirg.data.core import DATASETS
    from pyirg.netspec import DataConfig
    from pyirg.refilled import RefilledConfig

    (t_depth, t_widen), (s_depth, s_widen) = s.stage_pair
    data = DataConfig(kind="input", dataset=DATASETS["cifar100"], train_batch=s.stage_batch)
    teacher, student = WideResNetSpec(t_depth, t_widen), WideResNetSpec(s_depth, s_widen)
    return RefilledConfig(teacher, student, data=data)


def bench_stage(stage: int, s: Settings) -> dict[str, Any]:
    """``solver.step(1)`` of a stage net, and its REFILLED layer's own forward + backward."""
    from pyirg.refilled import CENTER_KD, RELATION_LOSS, describe, stage1_net, stage2_net

    cfg = stage_config(s)
    net_param = stage1_net(cfg) if stage == 1 else stage2_net(cfg)
    name = RELATION_LOSS if stage == 1 else CENTER_KD
    solver = _solver(net_param, stage)
    net = solver.net
    net.blobs["Data2"].data[...] = np.random.default_rng(stage).integers(0, 100, s.stage_batch)
    if stage == 2:  # GLOBAL centers, as a stage-2 run loads them with the teacher
        centers = net.params[name][0].data
        centers[...] = np.random.default_rng(0).standard_normal(centers.shape)
    steps = {"step": lambda: solver.step(1)}
    timing = measure(steps, {"step": "openblas"}, s.stage_reps, 0.0, s.train_warmup, s.settle)
    per_layer = _per_layer(net, s.attribution_reps)
    layer_ms = float(np.median([1e3 * t[name] for t in per_layer]))
    step_ms = 1e3 * timing["step"].median
    return {
        "stage": stage,
        "layer": TRIPLET if stage == 1 else CENTER,
        "pair": {k: describe(cfg)[k] for k in ("teacher", "student", "embedding")},
        "batch": s.stage_batch,
        "step": timing["step"].summary(),
        "layer_ms": layer_ms,
        "all_layers_ms": float(np.median([1e3 * sum(t.values()) for t in per_layer])),
        "layer_share_pct": 100 * layer_ms / step_ms,
    }
