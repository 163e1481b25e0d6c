"""Whole-net comparisons: the ``pyirg.distill`` training nets in pycaffe vs PyTorch.

The IRG, IRG-t and MTK training nets of a small teacher and student (ResNet-14 x0.5 ->
ResNet-14 x0.25, Input data, batch 8, 8x8 images; ResNet-14 so that every stage has the two
blocks an IRG-t pair needs) in pycaffe, and the same networks in PyTorch (``CifarResNet``
teacher in eval mode, i.e. global statistics as Caffe's frozen teacher with
``use_global_stats``; student in train mode, i.e. batch statistics) with
:class:`pyirg.torch.losses.IRGLoss`, weights copied from the pycaffe net through
:mod:`pyirg.torch.caffemodel` (every weight, bias, scale and BatchNorm statistic is set
to random values first, with a BatchNorm scale factor of 2.5).

The two sides share only the choice of nets (depth, width, classes) and method: the
PyTorch nets are built from the reference's own description
(:func:`pyirg.torch.resnet.resnet_layout`) and the reference picks the layers each term
compares and the method's weights itself (:meth:`~pyirg.torch.losses.IRGLoss.from_networks`),
so a wrong architecture, pair or weight in ``pyirg.arch`` / ``pyirg.distill`` is a FAIL
here rather than a bug both sides share.

One row per loss term and one for the weighted total: ``fwd`` compares the term's value
(Caffe's loss top, i.e. unweighted), ``bwd`` the student's parameter gradients of that term
alone (all student parameters together). Caffe's per-term gradient is obtained by setting
the loss tops' diffs (where Caffe keeps its loss weights) to 1 for that term's layers and 0
for the rest before ``net.backward()``; the total uses the nets' own loss weights. No
solver is involved, so no weight decay. Tolerance 1e-4.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from pyirg.arch import cifar_resnet
from pyirg.caffeio import caffe_net
from pyirg.distill import DistillConfig, distill_net
from pyirg.netspec import DataConfig, Dataset
from pyirg.torch.caffemodel import layers_from_pycaffe, load_caffe_weights
from pyirg.torch.losses import IRGLoss
from pyirg.torch.resnet import CifarResNet, caffe_name_map, resnet_layout
from pyirg.verify.layer_compare import ALL_MODES, DEFAULT_MODE, Mode
from pyirg.verify.report import CAFFE_ROW, FLOAT_TOL, MISSING, Row, errors, flatten, make_row

NET_METHODS = ("IRG", "IRG-t", "MTK")
#: (depth, width) of the whole-net teacher and student; ResNet-14 has two blocks per stage.
NET_TEACHER, NET_STUDENT = (14, 0.5), (14, 0.25)
NET_BATCH, NET_CLASSES, NET_CHANNELS = 8, 10, 3
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


def distill_config(case: NetCase) -> DistillConfig:
    """The Caffe side's configuration of a whole-net case (Input data, batch 8)."""
    dataset = Dataset("verify", NET_CHANNELS, case.size, NET_CLASSES, 0, NET_BATCH, NET_BATCH)
    data = DataConfig(kind="input", dataset=dataset, train_batch=NET_BATCH, test_batch=NET_BATCH)
    return DistillConfig.for_method(
        case.method,
        cifar_resnet(*NET_TEACHER, NET_CLASSES, NET_CHANNELS),
        cifar_resnet(*NET_STUDENT, NET_CLASSES, NET_CHANNELS),
        data=data,
        name=f"verify_{case.method}",
        **asdict(case.mode),
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


#: An EuclideanLoss's term, by the type of layer that produced its bottoms.
_EUCLIDEAN_TERMS = {
    "BatchEuclideanMap": "edges",
    "BatchEuclideanVector": "transform",
    "InnerProduct": "logits",
}


def loss_terms(net_param: Any, student_prefix: str) -> dict[str, tuple[str, float]]:
    """Loss top -> (term, loss weight), classified by what feeds each loss layer.

    Independent of the generator's naming: an EuclideanLoss of two BatchEuclideanMap tops
    is an edge term, of two BatchEuclideanVector tops a transformation term, of two
    InnerProduct tops the logits term; the student's SoftmaxWithLoss is the ground truth.
    """
    producer: dict[str, tuple[str, str]] = {}
    out: dict[str, tuple[str, float]] = {}
    for layer in net_param.layer:
        if layer.type in ("EuclideanLoss", "SoftmaxWithLoss"):
            kinds = {producer[b][0] for b in layer.bottom if b in producer}
            owners = {producer[b][1].startswith(student_prefix) for b in layer.bottom[:1]}
            if layer.type == "SoftmaxWithLoss":
                term = "gt" if owners == {True} else None
            else:
                term = _EUCLIDEAN_TERMS.get(kinds.pop()) if len(kinds) == 1 else None
            weight = float(layer.loss_weight[0]) if layer.loss_weight else 1.0
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
    values["total"] = sum(values[t] * w for t, w in dict(terms.values()).items())
    return values, grads


def reference_nets(case: NetCase) -> tuple[CifarResNet, CifarResNet, IRGLoss]:
    """(teacher, student, loss) of the PyTorch side, from the reference's own description."""
    t_layout = resnet_layout(*NET_TEACHER, NET_CLASSES, NET_CHANNELS)
    s_layout = resnet_layout(*NET_STUDENT, NET_CLASSES, NET_CHANNELS)
    teacher = CifarResNet(t_layout).double().eval()  # frozen: global statistics
    student = CifarResNet(s_layout).double().train()  # trained: batch statistics
    loss = IRGLoss.from_networks(case.method, t_layout, s_layout, **asdict(case.mode))
    return teacher, student, loss


def compare_net(case: NetCase, rng: np.random.Generator) -> list[Row]:
    """A distillation net in pycaffe (float32) vs the same in PyTorch (float64)."""
    cfg = distill_config(case)
    net_param = distill_net(cfg)
    net = caffe_net(net_param, "TRAIN")
    randomize_params(net, rng)
    sp = cfg.student_prefix
    teacher, student, loss = reference_nets(case)
    blobs = layers_from_pycaffe(net)
    load_caffe_weights(teacher, blobs)
    load_caffe_weights(student, blobs, prefix=sp)

    x = rng.standard_normal((NET_BATCH, NET_CHANNELS, case.size, case.size)).astype(np.float32)
    labels = rng.integers(0, NET_CLASSES, NET_BATCH)
    params = dict(student.named_parameters())
    keys = {k: (sp + layer, i) for k, (layer, i) in caffe_name_map(student).items() if k in params}
    c_values, c_grads = caffe_net_run(
        net, x, labels.astype(np.float32), loss_terms(net_param, sp), keys
    )
    xt = torch.tensor(x, dtype=torch.float64)
    with torch.no_grad():
        _, t_feats = teacher(xt, return_features=True)
    _, s_feats = student(xt, return_features=True)
    t_terms = loss(s_feats, t_feats, torch.tensor(labels))

    def row(term: str, fwd: tuple[float, float], bwd: tuple[float, float], note: str) -> Row:
        return make_row(case.label, case.mode.label, CAFFE_ROW, term, fwd, bwd, FLOAT_TOL, note)

    rows = []
    for which in [*(t for t in TERMS if t in c_grads), "total"]:
        if which not in t_terms:
            rows.append(row(which, MISSING, MISSING, "term missing from the PyTorch loss"))
            continue
        g = torch.autograd.grad(
            t_terms[which], [params[k] for k in keys], retain_graph=True, allow_unused=True
        )
        t_flat = flatten(
            [np.zeros(params[k].shape) if gk is None else gk.numpy() for k, gk in zip(keys, g)]
        )
        c_flat = flatten([c_grads[which][k] for k in keys])
        fwd = errors(np.array(c_values[which]), np.array(t_terms[which].item()))
        note = "fwd: loss term, bwd: all student parameter gradients"
        rows.append(row(which, fwd, errors(c_flat, t_flat), note))
    missing = set(t_terms) - set(c_values) - {"total"}
    if missing:
        note = "term missing from the Caffe net"
        rows.append(row(",".join(sorted(missing)), MISSING, MISSING, note))
    return rows


def compare_nets(full: bool, seed: int) -> list[Row]:
    """Every method's distillation net in pycaffe vs PyTorch (this module's docstring)."""
    rng = np.random.default_rng(seed + 1)
    return [row for case in net_plan(full) for row in compare_net(case, rng)]
