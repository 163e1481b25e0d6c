"""CIFAR ResNets and their data layers as pycaffe NetSpecs.

Every net of the project is built here from one :class:`pyirg.arch.ResNetSpec`, so
layer and blob names follow the authors' files (``Convolution1``, ``BatchNorm1``,
``Scale1``, ``ReLU1`` in place on the convolution's top, ``Eltwise1``.., ``Pooling1``,
``InnerProduct1``) and a student built with ``prefix="stu_"`` differs from a teacher only
by that prefix and its parameter blocks.

Parameter blocks are the authors' (see IRG.prototxt), because they decide what trains:

- trainable Convolution: ``param {lr_mult 1 decay_mult 1} param {lr_mult 2 decay_mult 0}``,
  msra weights, constant-0 bias, ``bias_term`` left at its default (true) as they do;
- BatchNorm: three ``param {lr_mult 0 decay_mult 0}`` always (its blobs are statistics,
  not weights); ``use_global_stats`` is left unset in a trainable net, so Caffe uses batch
  statistics in TRAIN and the running averages in TEST;
- Scale: ``bias_term: true``; no param block when trainable (Caffe's defaults, 1/1);
- trainable InnerProduct: ``param {lr_mult 1 decay_mult 1} param {lr_mult 2 decay_mult 1}``
  (their classifier bias, unlike their conv biases, is weight-decayed);
- frozen (a teacher): every param block ``lr_mult 0 decay_mult 0`` and BatchNorm
  ``use_global_stats: true``, so neither its weights nor its statistics move.

NetSpec cannot hold two layers with the same top names, which is what a TRAIN and a
TEST data layer are; :func:`to_net` therefore builds the TEST data layer in a NetSpec of
its own and inserts it right after the TRAIN one, as the authors' files have them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from caffe import layers as L
from caffe import params as P
from caffe.net_spec import NetSpec, Top
from caffe.proto import caffe_pb2

from pyirg.arch import ConvSpec, ResNetSpec
from pyirg.data.core import DATASETS, Dataset

TRAIN = caffe_pb2.TRAIN
TEST = caffe_pb2.TEST

#: The two blobs every training net's data layer produces, named as in the authors' files.
DATA_BLOB, LABEL_BLOB = "Data1", "Data2"
DEPLOY_INPUT = "data"
DEPLOY_OUTPUT = "prob"

CONV_TRAINABLE = ({"lr_mult": 1, "decay_mult": 1}, {"lr_mult": 2, "decay_mult": 0})
FC_TRAINABLE = ({"lr_mult": 1, "decay_mult": 1}, {"lr_mult": 2, "decay_mult": 1})
FROZEN = {"lr_mult": 0, "decay_mult": 0}
FROZEN_PAIR = (FROZEN,) * 2
BN_STATS = (FROZEN,) * 3
MSRA = {"type": "msra"}
ZERO = {"type": "constant", "value": 0}

DATA_KINDS = ("lmdb", "imagedata", "hdf5", "input")


@dataclass(frozen=True)
class DataConfig:
    """Where a net's images and labels come from, for TRAIN and TEST.

    ``kind``: ``lmdb`` (Caffe Data layer with mean files, as the authors' IRG nets),
    ``imagedata`` (list files, as the authors' ResNet-20.prototxt), ``hdf5`` (list of HDF5
    files whose datasets are named ``Data1`` and ``Data2``) or ``input`` (one Input layer
    for both phases; arrays are fed from Python). Paths left ``None`` get placeholders
    under ``data/<dataset>/``.
    """

    kind: str = "lmdb"
    dataset: Dataset = field(default_factory=lambda: DATASETS["cifar10"])
    train_batch: int = 64
    test_batch: int = 100
    train_source: str | None = None
    test_source: str | None = None
    mean_file: str | None = None
    mean_pad_file: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in DATA_KINDS:
            raise ValueError(f"data kind must be one of {DATA_KINDS}, got {self.kind!r}")
        for what, n in (("train_batch", self.train_batch), ("test_batch", self.test_batch)):
            if n < 1:
                raise ValueError(f"DataConfig.{what} must be >= 1, got {n}")

    @property
    def sources(self) -> tuple[str, str]:
        """(train, test) source paths; placeholders under ``data/<dataset>/``.

        The LMDB training source is the zero-padded one that ``pyirg prepare-data``
        writes (``train_pad_lmdb``): the TRAIN Data layer crops ``size`` out of it and
        subtracts ``mean_pad.binaryproto``, as the authors' IRG nets do.
        """
        suffix = {"lmdb": "_lmdb", "imagedata": ".txt", "hdf5": "_h5.txt"}.get(self.kind, "")
        root = self.dataset.root
        train = "train_pad" if self.kind == "lmdb" else "train"
        return (
            self.train_source or f"{root}/{train}{suffix}",
            self.test_source or f"{root}/test{suffix}",
        )

    @property
    def means(self) -> tuple[str, str]:
        """(mean of the padded training images, mean of the test-size images)."""
        root = self.dataset.root
        return (
            self.mean_pad_file or f"{root}/mean_pad.binaryproto",
            self.mean_file or f"{root}/mean.binaryproto",
        )

    @property
    def test_iter(self) -> int:
        """Test batches that cover the test set once."""
        return math.ceil(self.dataset.test_size / self.test_batch)


# ----------------------------------------------------------------------------- data


def _data_layer(data: DataConfig, phase: int) -> tuple[Top, Top]:
    """The data layer of one phase (both phases for ``input``), two tops."""
    ds = data.dataset
    train = phase == TRAIN
    batch = data.train_batch if train else data.test_batch
    source = data.sources[0 if train else 1]
    include = {} if data.kind == "input" else {"include": {"phase": phase}}
    if data.kind == "input":
        shapes = [{"dim": [batch, ds.channels, ds.size, ds.size]}, {"dim": [batch]}]
        return L.Input(ntop=2, shape=shapes)
    if data.kind == "lmdb":
        mean_pad, mean = data.means
        transform = (
            {"mirror": ds.mirror, "crop_size": ds.size, "mean_file": mean_pad}
            if train
            else {"mean_file": mean}
        )
        if ds.scale != 1.0:
            transform["scale"] = ds.scale
        return L.Data(
            ntop=2,
            transform_param=transform,
            source=source,
            batch_size=batch,
            backend=P.Data.LMDB,
            **include,
        )
    if data.kind == "imagedata":
        transform = {"mean_value": [127.5] * ds.channels, "scale": 1.0 / 256, "crop_size": ds.size}
        if train:
            transform["mirror"] = True
        padded = ds.size + 2 * ds.pad
        return L.ImageData(
            ntop=2,
            transform_param=transform,
            source=source,
            batch_size=batch,
            new_height=padded,
            new_width=padded,
            is_color=ds.channels == 3,
            shuffle=train,
            **include,
        )
    return L.HDF5Data(ntop=2, source=source, batch_size=batch, shuffle=train, **include)


def add_data(ns: NetSpec, data: DataConfig) -> tuple[Top, Top]:
    """Add the TRAIN data layer (``Data1``: images, ``Data2``: labels); see :func:`to_net`."""
    ns[DATA_BLOB], ns[LABEL_BLOB] = _data_layer(data, TRAIN)
    return ns[DATA_BLOB], ns[LABEL_BLOB]


def to_net(ns: NetSpec, name: str, data: DataConfig | None = None) -> caffe_pb2.NetParameter:
    """NetSpec -> NetParameter named ``name``, with the TEST data layer after the TRAIN one."""
    net = ns.to_proto()
    net.name = name
    if data is not None and data.kind != "input":
        test_ns = NetSpec()
        test_ns[DATA_BLOB], test_ns[LABEL_BLOB] = _data_layer(data, TEST)
        test_layer = test_ns.to_proto().layer[0]
        index = next(i for i, layer in enumerate(net.layer) if layer.name == DATA_BLOB)
        layers = list(net.layer)
        layers.insert(index + 1, test_layer)
        del net.layer[:]
        net.layer.extend(layers)
    return net


# ----------------------------------------------------------------------------- ResNet


def spec_label(spec: ResNetSpec) -> str:
    """``ResNet-20``, ``ResNet-14-x0.5``: how the paper and the file names call a net."""
    return f"ResNet-{spec.depth}" + ("" if spec.width == 1 else f"-x{spec.width:g}")


def blob_channels(spec: ResNetSpec) -> dict[str, int]:
    """Unprefixed blob name -> channels, in network order (the order layers run).

    Conv blobs carry BatchNorm/Scale/ReLU in place, so their names stand for the unit's
    output; ``Pooling1`` is N x C x 1 x 1 and ``InnerProduct1`` N x classes.
    """
    out: dict[str, int] = {spec.stem.conv: spec.stem.out_channels}
    for block in spec.blocks:
        for unit in (block.proj, block.conv_a, block.conv_b):
            if unit is not None:
                out[unit.conv] = unit.out_channels
        out[block.eltwise] = block.conv_b.out_channels
    out[spec.pool] = spec.feature_channels
    out[spec.fc] = spec.num_classes
    return out


def add_bn_scale(
    ns: NetSpec, bn: str, scale: str, bottom: Top, frozen: bool, in_place: bool = True
) -> Top:
    """BatchNorm (in place on ``bottom`` or a new blob) + Scale with bias in place on it,
    with the parameter blocks of the module docstring (a frozen pair keeps its statistics
    and its scale)."""
    bn_extra = {"use_global_stats": True} if frozen else {}
    ns[bn] = top = L.BatchNorm(bottom, in_place=in_place, param=list(BN_STATS), **bn_extra)
    scale_extra = {"param": list(FROZEN_PAIR)} if frozen else {}
    ns[scale] = top = L.Scale(top, in_place=True, bias_term=True, **scale_extra)
    return top


def inner_product(bottom: Top, num_output: int, frozen: bool) -> Top:
    """A classifier InnerProduct: msra weights, zero bias, trainable or frozen param blocks."""
    return L.InnerProduct(
        bottom,
        param=list(FROZEN_PAIR if frozen else FC_TRAINABLE),
        num_output=num_output,
        weight_filler=MSRA,
        bias_filler=ZERO,
    )


def _conv_unit(ns: NetSpec, unit: ConvSpec, bottom: Top, prefix: str, frozen: bool) -> Top:
    """Convolution + BatchNorm + Scale (+ ReLU), the last three in place."""
    ns[prefix + unit.conv] = top = L.Convolution(
        bottom,
        param=list(FROZEN_PAIR if frozen else CONV_TRAINABLE),
        num_output=unit.out_channels,
        pad=unit.pad,
        kernel_size=unit.kernel,
        stride=unit.stride,
        weight_filler=MSRA,
        bias_filler=ZERO,
    )
    top = add_bn_scale(ns, prefix + unit.bn, prefix + unit.scale, top, frozen)
    if unit.relu is not None:
        ns[prefix + unit.relu] = top = L.ReLU(top, in_place=True)
    return top


def add_features(
    ns: NetSpec, spec: ResNetSpec, bottom: Top, prefix: str = "", frozen: bool = False
) -> dict[str, Top]:
    """Stem, residual blocks and global average pooling (``Pooling1``).

    Returns unprefixed blob name -> the Top that ends that blob's in-place chain, so later
    layers read the blob after its BatchNorm/Scale/ReLU. In a block with a projection the
    projection is added first, as in the authors' numbering and files.
    """
    tops: dict[str, Top] = {}
    x = tops[spec.stem.conv] = _conv_unit(ns, spec.stem, bottom, prefix, frozen)
    for block in spec.blocks:
        shortcut = x
        if block.proj is not None:
            shortcut = tops[block.proj.conv] = _conv_unit(ns, block.proj, x, prefix, frozen)
        a = tops[block.conv_a.conv] = _conv_unit(ns, block.conv_a, x, prefix, frozen)
        b = tops[block.conv_b.conv] = _conv_unit(ns, block.conv_b, a, prefix, frozen)
        ns[prefix + block.eltwise] = s = L.Eltwise(shortcut, b, operation=P.Eltwise.SUM)
        ns[prefix + block.relu] = x = tops[block.eltwise] = L.ReLU(s, in_place=True)
    ns[prefix + spec.pool] = tops[spec.pool] = L.Pooling(x, pool=P.Pooling.AVE, global_pooling=True)
    return tops


def add_classifier(
    ns: NetSpec,
    spec: ResNetSpec,
    pooled: Top,
    prefix: str = "",
    frozen: bool = False,
    label: Top | None = None,
    loss_weight: float | None = None,
) -> Top:
    """``InnerProduct1`` and, given a label, ``SoftmaxWithLoss1`` and a TEST ``Accuracy1``.

    ``loss_weight`` is written only when given, so a plain net reads like the authors'.
    """
    ns[prefix + spec.fc] = logits = inner_product(pooled, spec.num_classes, frozen)
    if label is not None:
        weight = {} if loss_weight is None else {"loss_weight": loss_weight}
        ns[prefix + "SoftmaxWithLoss1"] = L.SoftmaxWithLoss(logits, label, **weight)
        ns[prefix + "Accuracy1"] = L.Accuracy(logits, label, include={"phase": TEST})
    return logits


def batchnorm_memory(net: caffe_pb2.NetParameter, fraction: float) -> caffe_pb2.NetParameter:
    """Give the trained BatchNorm layers a memory of ``fraction`` for their test statistics.

    Caffe's default moving_average_fraction (0.999) averages the batch statistics over
    about a thousand iterations: right for 64k-iteration CIFAR runs, but a run of a few
    hundred iterations would then test with statistics mostly of its first, very
    different, weights (PyTorch's BatchNorm momentum 0.1 is a fraction of 0.9). Frozen
    (use_global_stats) layers are left alone.
    """
    for layer in net.layer:
        if layer.type == "BatchNorm" and not layer.batch_norm_param.use_global_stats:
            layer.batch_norm_param.moving_average_fraction = fraction
    return net


def check_channels(spec: ResNetSpec, channels: int, what: str, role: str = "") -> None:
    """Refuse ``channels``-channel input (from ``what``) to ``spec``, the ``role`` net."""
    if spec.in_channels != channels:
        net = f"{role} {spec_label(spec)}" if role else spec_label(spec)
        raise ValueError(
            f"{net} takes {spec.in_channels}-channel input but {what} has {channels} channels"
        )


def train_net(
    spec: ResNetSpec,
    data: DataConfig | None = None,
    name: str = "resnet_cifar10",
    prefix: str = "",
    frozen: bool = False,
) -> caffe_pb2.NetParameter:
    """One ResNet trained on the ground truth alone (a teacher, or a baseline student).

    A frozen net is a distillation teacher: its loss gets weight 0 (logged, never trained).
    """
    data = data or DataConfig(train_batch=128, test_batch=100)
    check_channels(spec, data.dataset.channels, f"data set {data.dataset.name!r}")
    ns = NetSpec()
    images, labels = add_data(ns, data)
    pooled = add_features(ns, spec, images, prefix, frozen)[spec.pool]
    add_classifier(ns, spec, pooled, prefix, frozen, labels, 0.0 if frozen else None)
    return to_net(ns, name, data)


def deploy_net(
    spec: ResNetSpec,
    prefix: str = "",
    batch: int = 1,
    channels: int | None = None,
    height: int = 32,
    width: int = 32,
) -> caffe_pb2.NetParameter:
    """Inference net: Input ``data`` -> ResNet -> ``InnerProduct1`` -> Softmax ``prob``.

    Layer names keep ``prefix`` so a distillation snapshot (``stu_...`` weights) loads by
    name. No param blocks (nothing trains), BatchNorm ``use_global_stats: true`` written
    out so exporters need not infer the phase.
    """
    channels = spec.in_channels if channels is None else channels
    check_channels(spec, channels, "the deploy input")
    if min(batch, height, width) < 1:
        raise ValueError(f"deploy input {batch}x{channels}x{height}x{width} must be positive")
    ns = NetSpec()
    ns[DEPLOY_INPUT] = L.Input(shape={"dim": [batch, channels, height, width]})
    pooled = add_features(ns, spec, ns[DEPLOY_INPUT], prefix, frozen=True)[spec.pool]
    ns[DEPLOY_OUTPUT] = L.Softmax(add_classifier(ns, spec, pooled, prefix, frozen=True))
    net = to_net(ns, f"{spec_label(spec)}_deploy")
    for layer in net.layer:
        layer.ClearField("param")
    return net


def lookup(tops: Mapping[str, Top], name: str, spec: ResNetSpec, role: str) -> Top:
    """``tops[name]`` with an error naming the net and the blobs it has."""
    if name not in tops:
        raise ValueError(
            f"{role} {spec_label(spec)} has no blob {name!r}; it has: {', '.join(tops)}"
        )
    return tops[name]
