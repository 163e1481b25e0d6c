"""The other networks REFILLED distills between, as pycaffe NetSpecs: wide ResNets and
MobileNet-v1.

Why here and not in :mod:`pyirg.arch`: the CIFAR ResNet there is numbered like the IRG
authors' Caffe files, so weights move by name between their prototxts and ours; these
two have no Caffe release to match, so their layers get descriptive names
(``block2_1_conv1``) and the description and the NetSpec live together.

- **WRN-d-k** (Zagoruyko and Komodakis 2016): depth ``d = 6n + 4``, three stages of ``n``
  pre-activation blocks (BatchNorm-ReLU-conv3x3-dropout-BatchNorm-ReLU-conv3x3) of
  16k / 32k / 64k channels after a 16-channel stem, stride 2 at the second and third
  stage, a 1x1 projection of the pre-activated input where the width or stride changes,
  then BatchNorm-ReLU, global average pooling and the classifier.
- **MobileNet-v1** with width multiplier ``alpha`` (Howard et al. 2017): a stride-2 3x3
  convolution of 32 alpha channels, then 13 depthwise-separable units (a depthwise 3x3,
  a ``Convolution`` with ``group`` = channels, and a pointwise 1x1, each with BatchNorm,
  Scale and ReLU), global average pooling and the classifier.

The **embedding** REFILLED relates is the globally pooled penultimate feature (``pool``);
the classifier is ``fc``. Parameter blocks are those of :mod:`pyirg.netspec`: a frozen
net (a teacher) has every ``lr_mult`` 0 and BatchNorm ``use_global_stats``, and no
Dropout (a teacher is used in evaluation mode).
"""

from __future__ import annotations

from dataclasses import dataclass

from caffe import layers as L
from caffe import params as P
from caffe.net_spec import NetSpec, Top

from pyirg.netspec import CONV_TRAINABLE, FROZEN, MSRA, add_bn_scale, inner_product

#: Trainable convolutions without a bias (BatchNorm + Scale follow every one).
CONV_NO_BIAS = CONV_TRAINABLE[:1]
FROZEN_ONE = (FROZEN,)
#: MobileNet-v1's depthwise-separable units: (pointwise output channels, stride).
MOBILENET_UNITS = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)  # fmt: skip
EMBEDDING, LOGITS = "pool", "fc"


@dataclass(frozen=True)
class WideResNetSpec:
    """WRN-``depth``-``widen`` with ``dropout`` between the two convolutions of a block."""

    depth: int = 16
    widen: int = 1
    num_classes: int = 100
    in_channels: int = 3
    dropout: float = 0.3

    def __post_init__(self) -> None:
        if self.depth < 10 or (self.depth - 4) % 6:
            raise ValueError(
                f"a wide ResNet has depth 6n + 4 (10, 16, 22, 28, 40, ...), got {self.depth}"
            )
        if self.widen < 1:
            raise ValueError(f"widen must be >= 1, got {self.widen}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")

    @property
    def label(self) -> str:
        return f"WRN-{self.depth}-{self.widen}"

    @property
    def blocks_per_stage(self) -> int:
        return (self.depth - 4) // 6

    @property
    def widths(self) -> tuple[int, int, int]:
        return 16 * self.widen, 32 * self.widen, 64 * self.widen

    @property
    def embedding_size(self) -> int:
        return self.widths[-1]


@dataclass(frozen=True)
class MobileNetSpec:
    """MobileNet-v1 at width multiplier ``width`` (1, 0.75, 0.5, 0.25)."""

    width: float = 1.0
    num_classes: int = 200
    in_channels: int = 3

    def __post_init__(self) -> None:
        if not 0 < self.width <= 4:
            raise ValueError(f"width must lie in (0, 4], got {self.width}")

    @property
    def label(self) -> str:
        return f"MobileNet-{self.width:g}"

    def channels(self, base: int) -> int:
        """``base`` channels scaled by the width multiplier (at least 8)."""
        return max(8, int(base * self.width))

    @property
    def embedding_size(self) -> int:
        return self.channels(MOBILENET_UNITS[-1][0])


Backbone = WideResNetSpec | MobileNetSpec


def _bn_relu(ns: NetSpec, name: str, bottom: Top, frozen: bool, *, in_place: bool) -> Top:
    """BatchNorm + Scale + ReLU; in place on ``bottom`` or (pre-activation) as a new blob."""
    top = add_bn_scale(ns, name + "_bn", name + "_scale", bottom, frozen, in_place)
    ns[name + "_relu"] = top = L.ReLU(top, in_place=True)
    return top


def _conv(
    ns: NetSpec, name: str, bottom: Top, out: int, kernel: int, stride: int, frozen: bool,
    group: int = 1,
) -> Top:  # fmt: skip
    extra = {"group": group} if group > 1 else {}
    ns[name] = top = L.Convolution(
        bottom,
        param=list(FROZEN_ONE if frozen else CONV_NO_BIAS),
        num_output=out,
        kernel_size=kernel,
        stride=stride,
        pad=kernel // 2,
        bias_term=False,
        weight_filler=MSRA,
        **extra,
    )
    return top


def _wide_resnet(ns: NetSpec, spec: WideResNetSpec, x: Top, p: str, frozen: bool) -> Top:
    """Stem and the three stages of pre-activation blocks, then the last BatchNorm-ReLU."""
    x = _conv(ns, p + "conv1", x, 16, 3, 1, frozen)
    cin = 16
    for s, cout in enumerate(spec.widths, start=1):
        for b in range(1, spec.blocks_per_stage + 1):
            name = f"{p}block{s}_{b}"
            stride = 2 if s > 1 and b == 1 else 1
            act = _bn_relu(ns, name + "_pre", x, frozen, in_place=False)
            y = _conv(ns, name + "_conv1", act, cout, 3, stride, frozen)
            y = _bn_relu(ns, name + "_mid", y, frozen, in_place=True)
            if spec.dropout > 0 and not frozen:
                ns[name + "_drop"] = y = L.Dropout(y, in_place=True, dropout_ratio=spec.dropout)
            y = _conv(ns, name + "_conv2", y, cout, 3, 1, frozen)
            shortcut = x
            if cin != cout or stride != 1:
                shortcut = _conv(ns, name + "_proj", act, cout, 1, stride, frozen)
            ns[name + "_sum"] = x = L.Eltwise(shortcut, y, operation=P.Eltwise.SUM)
            cin = cout
    return _bn_relu(ns, p + "final", x, frozen, in_place=True)


def _mobilenet(ns: NetSpec, spec: MobileNetSpec, x: Top, p: str, frozen: bool) -> Top:
    """The stride-2 stem and the 13 depthwise-separable units."""
    cin = spec.channels(32)
    x = _conv(ns, p + "conv1", x, cin, 3, 2, frozen)
    x = _bn_relu(ns, p + "conv1", x, frozen, in_place=True)
    for i, (base, stride) in enumerate(MOBILENET_UNITS, start=2):
        cout = spec.channels(base)
        x = _conv(ns, f"{p}conv{i}_dw", x, cin, 3, stride, frozen, group=cin)
        x = _bn_relu(ns, f"{p}conv{i}_dw", x, frozen, in_place=True)
        x = _conv(ns, f"{p}conv{i}_pw", x, cout, 1, 1, frozen)
        x = _bn_relu(ns, f"{p}conv{i}_pw", x, frozen, in_place=True)
        cin = cout
    return x


def add_embedding(
    ns: NetSpec, spec: Backbone, bottom: Top, prefix: str = "", frozen: bool = False
) -> Top:
    """The network on ``bottom`` up to its embedding ``pool`` (N x D x 1 x 1)."""
    body = _wide_resnet if isinstance(spec, WideResNetSpec) else _mobilenet
    x = body(ns, spec, bottom, prefix, frozen)
    ns[prefix + EMBEDDING] = pool = L.Pooling(x, pool=P.Pooling.AVE, global_pooling=True)
    return pool


def add_logits(
    ns: NetSpec, spec: Backbone, pooled: Top, prefix: str = "", frozen: bool = False
) -> Top:
    """The classifier ``fc`` on the embedding."""
    ns[prefix + LOGITS] = logits = inner_product(pooled, spec.num_classes, frozen)
    return logits


def add_backbone(
    ns: NetSpec, spec: Backbone, bottom: Top, prefix: str = "", frozen: bool = False
) -> dict[str, Top]:
    """The network on ``bottom``: ``{"pool": embedding N x D x 1 x 1, "fc": logits}``."""
    pool = add_embedding(ns, spec, bottom, prefix, frozen)
    return {EMBEDDING: pool, LOGITS: add_logits(ns, spec, pool, prefix, frozen)}
