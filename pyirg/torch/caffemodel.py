"""Weights between Caffe (.caffemodel / pycaffe ``net.params``) and :class:`CifarResNet`.

Why a converter of our own rather than pycaffe: a .caffemodel is a binary
``caffe_pb2.NetParameter`` whose layers carry their blobs, so reading and writing it with
the protobuf classes needs no net definition, no Caffe build of the right phase and no
process that a Caffe ``CHECK`` could abort. Errors here are ``ValueError``\\ s that name the
layer and the shapes, which the command-line tools turn into a one-line message.

What moves (see :func:`pyirg.torch.resnet.caffe_name_map`):

============== ============================== ===========================================
Caffe type     blobs                          PyTorch
============== ============================== ===========================================
Convolution    weight (O, I, kh, kw), bias    ``nn.Conv2d`` weight, bias
BatchNorm      mean sum, var sum, factor (1)  ``CaffeBatchNorm2d`` running_mean/var =
                                              sum / factor (0 when factor is 0, as Caffe
                                              does); ``caffe_factor`` = factor
Scale          weight, bias                   ``Scale`` weight, bias
InnerProduct   weight (O, I), bias            ``nn.Linear`` weight, bias
============== ============================== ===========================================

Writing goes the other way with BatchNorm factor 1 and the statistics as they are
(already divided), which Caffe reads back to the same values. The ``caffe_factor`` of the
PyTorch module (how far Caffe's moving average has run) is therefore not preserved by a
round trip through Caffe; it only matters to continued training, never to outputs.

Layers of the Caffe side without the requested prefix that the model does not have are
ignored (a distillation snapshot holds the teacher and the ``stu_`` student; Caffe's own
``copy_from`` ignores unknown layers too); with a non-empty prefix, a prefixed layer with
blobs that the model has no place for is an error, since its weights would be lost. A
model layer absent from the Caffe side, a layer of the wrong type, a wrong number of
blobs or a shape that differs is an error too. Old-style blobs that give only
``num/channels/height/width`` are accepted when they differ from the expected shape only
by leading 1s (``1 x 1 x O x I`` for an InnerProduct weight).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from caffe.proto import caffe_pb2
from torch import nn

from pyirg.caffeio import blob_array, blob_fits, read_binary, write_binary
from pyirg.torch.resnet import CaffeBatchNorm2d, CifarResNet, Scale

#: Caffe layer type and blob count for every module kind that holds weights.
CAFFE_TYPES: dict[type, tuple[str, int]] = {
    nn.Conv2d: ("Convolution", 2),
    CaffeBatchNorm2d: ("BatchNorm", 3),
    Scale: ("Scale", 2),
    nn.Linear: ("InnerProduct", 2),
}


@dataclass
class CaffeLayer:
    """One Caffe layer's learnable blobs, framework-neutral (float32 arrays)."""

    name: str
    type: str
    blobs: list[np.ndarray]


Source = str | Path | caffe_pb2.NetParameter | Mapping[str, CaffeLayer]


# ------------------------------------------------------------------------- protobuf I/O


def layers_from_net_parameter(net: caffe_pb2.NetParameter) -> dict[str, CaffeLayer]:
    """Layer name -> blobs, for every layer of ``net`` that has blobs."""
    if len(net.layers) and not len(net.layer):
        raise ValueError(
            "caffemodel uses the V1 'layers' field; upgrade it with Caffe's "
            "upgrade_net_proto_binary tool first"
        )
    out: dict[str, CaffeLayer] = {}
    for layer in net.layer:
        if not layer.blobs:
            continue
        if layer.name in out:
            raise ValueError(f"caffemodel has two layers named {layer.name!r} with blobs")
        blobs = [
            blob_array(b, f"caffemodel layer {layer.name!r} blob {i}")
            for i, b in enumerate(layer.blobs)
        ]
        out[layer.name] = CaffeLayer(layer.name, layer.type, blobs)
    return out


def layers_from_pycaffe(net: Any) -> dict[str, CaffeLayer]:
    """Layer name -> blobs (copies of the data) of a live ``caffe.Net``."""
    return {
        name: CaffeLayer(name, net.layer_dict[name].type, [np.array(b.data) for b in blobs])
        for name, blobs in net.params.items()
    }


def read_caffemodel(path: str | Path) -> dict[str, CaffeLayer]:
    """Layer name -> blobs of a binary .caffemodel."""
    return layers_from_net_parameter(read_binary(path))


def _as_layers(source: Source) -> dict[str, CaffeLayer]:
    if isinstance(source, (str, Path)):
        return read_caffemodel(source)
    if isinstance(source, caffe_pb2.NetParameter):
        return layers_from_net_parameter(source)
    return dict(source)


# ------------------------------------------------------------------------- Caffe -> torch


def _weight_modules(model: CifarResNet) -> list[tuple[str, nn.Module, str, int]]:
    """(layer name, module, Caffe type, blob count) for every module that holds weights."""
    out = []
    for name, module in model.layers.items():
        kind = CAFFE_TYPES.get(type(module))
        if kind is not None:
            out.append((name, module, *kind))
    return out


def _fit(layer: str, index: int, array: np.ndarray, expected: tuple[int, ...]) -> np.ndarray:
    """``array`` in ``expected`` shape; a legacy 4-D blob fits as Caffe fits it (leading 1s)."""
    if array.shape == expected:
        return array
    if blob_fits(tuple(array.shape), True, expected):
        return array.reshape(expected)
    raise ValueError(
        f"layer {layer!r} blob {index}: caffemodel shape {tuple(array.shape)} does not match "
        f"the model's {expected}"
    )


def state_dict_from_caffe(
    source: Source, model: CifarResNet, prefix: str = ""
) -> dict[str, torch.Tensor]:
    """The Caffe weights of ``model``'s layers (named ``prefix`` + layer) as a state_dict.

    Contains every parameter and BatchNorm buffer the model has a blob for, plus
    ``caffe_factor``; tensors take the dtype of the model's. Pass it to
    ``model.load_state_dict(..., strict=False)`` (``num_batches_tracked`` has no blob),
    or use :func:`load_caffe_weights`.
    """
    layers = _as_layers(source)
    modules = _weight_modules(model)
    out: dict[str, torch.Tensor] = {}
    missing = []
    for name, module, caffe_type, count in modules:
        layer = layers.get(prefix + name)
        if layer is None:
            missing.append(prefix + name)
            continue
        if layer.type != caffe_type:
            raise ValueError(
                f"layer {layer.name!r} is a {layer.type} in Caffe but {type(module).__name__} "
                f"({caffe_type}) in the model: cannot convert"
            )
        if len(layer.blobs) != count:
            raise ValueError(
                f"layer {layer.name!r} ({caffe_type}) has {len(layer.blobs)} blobs, expected "
                f"{count} (shapes {[tuple(b.shape) for b in layer.blobs]})"
            )
        out.update(_convert_in(name, layer, module))
    if missing:
        raise ValueError(
            f"caffemodel has no blobs for layer(s) {', '.join(missing)} (prefix {prefix!r}); "
            f"its layers with blobs: {', '.join(layers) or 'none'}"
        )
    if prefix:
        known = {prefix + name for name, *_ in modules}
        extra = [
            f"{n!r} ({layer.type})"
            for n, layer in layers.items()
            if n.startswith(prefix) and n not in known
        ]
        if extra:
            raise ValueError(
                f"caffemodel layer(s) {', '.join(extra)} carry the prefix {prefix!r} and have "
                f"blobs, but {type(model).__name__} has no such layer: cannot convert"
            )
    return out


def _convert_in(name: str, layer: CaffeLayer, module: nn.Module) -> dict[str, torch.Tensor]:
    key = f"layers.{name}."
    if isinstance(module, CaffeBatchNorm2d):
        c = module.num_features
        mean = _fit(layer.name, 0, layer.blobs[0], (c,))
        var = _fit(layer.name, 1, layer.blobs[1], (c,))
        factor = float(_fit(layer.name, 2, layer.blobs[2], (1,))[0])
        # Caffe: scale = factor == 0 ? 0 : 1 / factor (batch_norm_layer.cpp).
        scale = 0.0 if factor == 0 else 1.0 / factor
        like = module.running_mean
        return {
            key + "running_mean": torch.as_tensor(mean * scale, dtype=like.dtype),
            key + "running_var": torch.as_tensor(var * scale, dtype=like.dtype),
            key + "caffe_factor": torch.tensor(factor, dtype=module.caffe_factor.dtype),
        }
    out = {}
    for index, attr in enumerate(("weight", "bias")):
        param = getattr(module, attr)
        array = _fit(layer.name, index, layer.blobs[index], tuple(param.shape))
        out[key + attr] = torch.as_tensor(array, dtype=param.dtype).clone()
    return out


def load_caffe_weights(model: CifarResNet, source: Source, prefix: str = "") -> CifarResNet:
    """Copy Caffe weights into ``model`` in place (see :func:`state_dict_from_caffe`)."""
    state = state_dict_from_caffe(source, model, prefix)
    with torch.no_grad():
        targets = dict(model.named_parameters())
        targets.update(model.named_buffers())
        for key, value in state.items():
            targets[key].copy_(value)
    return model


# ------------------------------------------------------------------------- torch -> Caffe


def caffe_layers_from_model(model: CifarResNet, prefix: str = "") -> dict[str, CaffeLayer]:
    """The model's weights as Caffe layers named ``prefix`` + layer (BatchNorm factor 1)."""
    out = {}
    for name, module, caffe_type, _ in _weight_modules(model):
        if isinstance(module, CaffeBatchNorm2d):
            tensors = [module.running_mean, module.running_var, torch.ones(1)]
        else:
            tensors = [module.weight, module.bias]
        blobs = [t.detach().cpu().to(torch.float32).numpy().copy() for t in tensors]
        out[prefix + name] = CaffeLayer(prefix + name, caffe_type, blobs)
    return out


def net_parameter_from_layers(
    layers: Mapping[str, CaffeLayer], name: str = ""
) -> caffe_pb2.NetParameter:
    """A caffemodel NetParameter holding just these layers' names, types and blobs.

    That is all Caffe's ``CopyTrainedLayersFrom`` reads: it matches layers by name and
    checks blob shapes.
    """
    net = caffe_pb2.NetParameter()
    net.name = name
    for layer in layers.values():
        proto = net.layer.add()
        proto.name, proto.type = layer.name, layer.type
        for array in layer.blobs:
            blob = proto.blobs.add()
            blob.shape.dim.extend(int(d) for d in array.shape)
            blob.data.extend(np.asarray(array, dtype=np.float32).ravel().tolist())
    return net


def save_caffemodel(
    model: CifarResNet, path: str | Path, prefix: str = "", name: str = ""
) -> caffe_pb2.NetParameter:
    """Write ``model`` as a .caffemodel whose layers are named ``prefix`` + layer."""
    net = net_parameter_from_layers(caffe_layers_from_model(model, prefix), name)
    write_binary(path, net)
    return net
