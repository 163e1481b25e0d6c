"""The two implementations under test: the PyTorch reference and the Caffe layers.

Both are driven with the same bottoms and upstream gradient; PyTorch in float64 autograd,
Caffe in float32 through pycaffe (its only Python-reachable instantiation).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from pyirg.torch import layers as ref
from pyirg.verify.modes import Mode


def torch_layer(
    layer: str, bottoms: Sequence[np.ndarray], g: np.ndarray, mode: Mode
) -> tuple[np.ndarray, list[np.ndarray]]:
    """The reference layer in float64 autograd (looked up at call time, so tests can patch)."""
    xs = [torch.tensor(b, dtype=torch.float64, requires_grad=True) for b in bottoms]
    if layer == "BatchEuclideanMap":
        out = ref.batch_euclidean_map(xs[0], mode.normalize, mode.squared, mode.backward)
    else:
        out = ref.batch_euclidean_vector(*xs, mode.normalize, mode.squared, mode.backward)
    out.backward(torch.tensor(g, dtype=torch.float64).reshape(out.shape))
    grads = [
        np.zeros(b.shape) if x.grad is None else x.grad.detach().numpy()
        for x, b in zip(xs, bottoms)
    ]
    return out.detach().numpy(), grads


def load_net(net_param: Any, phase: str = "TEST") -> Any:
    """A pycaffe Net from a NetParameter (:func:`pyirg.netspec.caffe_net`)."""
    from pyirg.netspec import caffe_net

    return caffe_net(net_param, phase)


def layer_net(layer: str, shapes: Sequence[tuple[int, ...]], mode: Mode) -> Any:
    """Input blobs -> the layer, force_backward so the bottoms get diffs."""
    from caffe.proto import caffe_pb2

    net = caffe_pb2.NetParameter(name=f"verify_{layer}", force_backward=True)
    data = net.layer.add(name="input", type="Input")
    for i, shape in enumerate(shapes):
        data.top.append(f"b{i}")
        data.input_param.shape.add().dim.extend(shape)
    irg = net.layer.add(name="irg", type=layer, top=["top"], bottom=data.top)
    irg.irg_param.normalize = getattr(caffe_pb2.IRGParameter, mode.normalize)
    irg.irg_param.squared = mode.squared
    irg.irg_param.backward = getattr(caffe_pb2.IRGParameter, mode.backward)
    return load_net(net)


def caffe_layer(
    layer: str, bottoms: Sequence[np.ndarray], g: np.ndarray, mode: Mode
) -> tuple[np.ndarray, list[np.ndarray]]:
    """The Caffe layer in float32: forward, then backward from top diff ``g``."""
    net = layer_net(layer, [b.shape for b in bottoms], mode)
    for i, b in enumerate(bottoms):
        net.blobs[f"b{i}"].data[...] = b
    net.forward()
    top = net.blobs["top"]
    top.diff[...] = g.reshape(top.diff.shape)
    for i in range(len(bottoms)):
        net.blobs[f"b{i}"].diff[...] = np.nan  # a layer that writes nothing must show
    net.backward()
    out_shape = (bottoms[0].shape[0],) * (2 if layer == "BatchEuclideanMap" else 1)
    grads = [net.blobs[f"b{i}"].diff.copy() for i in range(len(bottoms))]
    return top.data.reshape(out_shape).copy(), grads
