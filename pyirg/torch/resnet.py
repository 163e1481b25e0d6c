"""The CIFAR ResNet-(6n+2) in PyTorch, described here from the paper, with Caffe's names.

The net (He et al.'s CIFAR ResNet as the IRG paper and the authors' ResNet-20.prototxt use
it): a 3x3 stem convolution to 16 channels, three stages of n basic blocks with 16, 32
and 64 channels (times a width multiplier), global average pooling and a classifier.
A basic block is two 3x3 convolutions and a shortcut; the first block of stages 2 and 3
halves the resolution (stride 2) and its shortcut is a strided 1x1 projection, every other
shortcut is the identity. Every convolution is followed by BatchNorm and Scale (with
bias); the block's first convolution and its sum are followed by a ReLU.

This description (:func:`resnet_layout`) is deliberately not :mod:`pyirg.arch`, from
which the Caffe nets are generated: it is written independently (the layer numbers come
from closed formulas rather than running counters), so that ``tools/verify.py`` compares
two implementations and a test (tests/test_torch_reference.py) holds the two descriptions
against each other and against a hand-written table of ResNet-20.

Names follow the authors' ResNet-20.prototxt: ``Convolution1``, ``BatchNorm1``,
``Scale1``, ``ReLU1``, ``Eltwise1``, ..., ``Pooling1``, ``InnerProduct1``, in network
order, with a stage's projection numbered before its block's two convolutions. A
shallower net may keep a deeper one's numbering (``numbering_depth``), as the authors'
ResNet-14 student does under ResNet-20, the missing blocks leaving gaps.

Every Caffe layer that computes something (Convolution, BatchNorm, Scale, ReLU, Eltwise,
Pooling, InnerProduct) is a module of the same name in ``model.layers``, so weights move
between the two frameworks by name alone (``layers.<name>.<attr>`` -> blob, see
:func:`caffe_name_map`; BatchNorm's third blob, Caffe's running-sum factor, is
:mod:`pyirg.torch.caffemodel`'s business) and features can be requested by the names the
prototxts use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor, nn

#: Channels of the three stages at width 1 (the paper's 16, 32, 64 filters).
STAGE_CHANNELS = (16, 32, 64)
POOL, CLASSIFIER = "Pooling1", "InnerProduct1"
#: Blocks the authors' ResNet-14 keeps of ResNet-20's three per stage (positions from 0),
#: read off their IRG_Transformation.prototxt: Eltwise1, 3 | 4, 5 | 7, 9.
AUTHORS_14_UNDER_20 = ((0, 2), (0, 1), (0, 2))


class ResNetChoice(Protocol):
    """What picks one net of the family; a :class:`ResNetLayout` or a ``pyirg.arch`` spec.

    Only these choices are read from a spec made elsewhere: everything derived from them
    (channels, strides, names) is derived here again.
    """

    depth: int
    width: float
    num_classes: int
    in_channels: int
    numbering_depth: int | None
    kept_blocks: tuple[tuple[int, ...], ...] | None


@dataclass(frozen=True)
class Unit:
    """Convolution, BatchNorm and Scale number ``number`` (one number for the three),
    followed by ``ReLU<relu>`` when ``relu`` is set."""

    number: int
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    relu: int | None = None

    @property
    def pad(self) -> int:
        """'Same' padding: a stride-1 unit keeps the resolution, a stride-2 one halves it."""
        return self.kernel // 2

    @property
    def conv(self) -> str:
        return f"Convolution{self.number}"

    @property
    def bn(self) -> str:
        return f"BatchNorm{self.number}"

    @property
    def scale(self) -> str:
        return f"Scale{self.number}"

    @property
    def relu_name(self) -> str | None:
        return None if self.relu is None else f"ReLU{self.relu}"


@dataclass(frozen=True)
class Block:
    """A basic block: ``conv_b(conv_a(x)) + shortcut(x)``, summed by ``Eltwise<number>``
    and followed by ``ReLU<relu>``; ``shortcut`` is None for the identity."""

    stage: int  # 0, 1, 2
    position: int  # in its stage, counted in the numbering net
    number: int
    conv_a: Unit
    conv_b: Unit
    shortcut: Unit | None
    relu: int

    @property
    def units(self) -> tuple[Unit, ...]:
        """The block's units in numbering order: the projection first."""
        return tuple(u for u in (self.shortcut, self.conv_a, self.conv_b) if u is not None)

    @property
    def eltwise(self) -> str:
        return f"Eltwise{self.number}"

    @property
    def relu_name(self) -> str:
        return f"ReLU{self.relu}"


@dataclass(frozen=True)
class ResNetLayout:
    """One CIFAR ResNet: the choices that define it and the units they give."""

    depth: int
    width: float
    num_classes: int
    in_channels: int
    numbering_depth: int
    kept_blocks: tuple[tuple[int, ...], ...]
    channels: tuple[int, int, int]
    stem: Unit
    blocks: tuple[Block, ...]
    pool: str = POOL
    fc: str = CLASSIFIER

    def units(self) -> list[Unit]:
        """Every unit in network (and numbering) order; a block's shortcut comes first."""
        return [self.stem, *(u for b in self.blocks for u in b.units)]


def _blocks_per_stage(depth: int, what: str) -> int:
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"{what} must be 6n+2 with n >= 1 (8, 14, 20, ...), got {depth}")
    return (depth - 2) // 6


def _kept(
    n: int, ref_n: int, kept: tuple[tuple[int, ...], ...] | None
) -> tuple[tuple[int, ...], ...]:
    """The kept positions per stage, checked: the first block of a stage owns the stride
    (and projection), so it is always kept."""
    if kept is None:
        kept = AUTHORS_14_UNDER_20 if (n, ref_n) == (2, 3) else ((*range(n),),) * 3
    kept = tuple(tuple(k) for k in kept)
    if len(kept) != 3 or any(
        len(k) != n or list(k) != sorted(set(k)) or k[0] or k[-1] >= ref_n for k in kept
    ):
        raise ValueError(
            f"kept_blocks must give each of 3 stages {n} increasing positions from 0, below "
            f"{ref_n}; got {kept}"
        )
    return kept


def resnet_layout(
    depth: int = 20,
    width: float = 1.0,
    num_classes: int = 10,
    in_channels: int = 3,
    numbering_depth: int | None = None,
    kept_blocks: tuple[tuple[int, ...], ...] | None = None,
) -> ResNetLayout:
    """ResNet-``depth`` x ``width``, numbered as ResNet-``numbering_depth`` (default: itself).

    Numbering in closed form: block k (0-based over the numbering net, k = stage * n_ref +
    position) is ``Eltwise<k+1>`` with ReLUs 2k+2 (after conv_a) and 2k+3 (after the sum);
    its first convolution number is 2 + 2k + the projections of earlier stages, its
    projection (if any) taking that number before conv_a and conv_b.
    """
    n = _blocks_per_stage(depth, "ResNet depth")
    ref_n = _blocks_per_stage(numbering_depth or depth, "numbering_depth")
    if ref_n < n:
        raise ValueError(f"cannot number ResNet-{depth} as the shallower ResNet-{numbering_depth}")
    kept = _kept(n, ref_n, kept_blocks)
    if not width > 0:
        raise ValueError(f"width multiplier must be positive, got {width}")
    channels = tuple(int(round(c * width)) for c in STAGE_CHANNELS)
    if min(channels) < 1:
        raise ValueError(f"width multiplier {width} leaves a stage with no channels")
    blocks = []
    for stage, positions in enumerate(kept):
        for position in positions:
            k = stage * ref_n + position
            first = 2 + 2 * k + sum(s * ref_n < k for s in (1, 2))
            projects = stage > 0 and position == 0
            cin = channels[stage - 1] if projects else channels[stage]
            cout, stride = channels[stage], 2 if projects else 1
            a = first + projects
            blocks.append(
                Block(
                    stage=stage,
                    position=position,
                    number=k + 1,
                    conv_a=Unit(a, cin, cout, 3, stride, relu=2 * k + 2),
                    conv_b=Unit(a + 1, cout, cout, 3, 1),
                    shortcut=Unit(first, cin, cout, 1, stride) if projects else None,
                    relu=2 * k + 3,
                )
            )
    return ResNetLayout(
        depth=depth,
        width=width,
        num_classes=num_classes,
        in_channels=in_channels,
        numbering_depth=numbering_depth or depth,
        kept_blocks=kept,
        channels=channels,  # type: ignore[arg-type]
        stem=Unit(1, in_channels, channels[0], 3, 1, relu=1),
        blocks=tuple(blocks),
    )


#: Caffe's batch_norm_param.moving_average_fraction default.
MOVING_AVERAGE_FRACTION = 0.999
BN_EPS = 1e-5


class CaffeBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm without affine whose running statistics follow Caffe's moving average.

    Caffe accumulates s <- λ·s + x and f <- λ·f + 1 and uses s / f: an exponential
    average with momentum 1 / f, which starts at 1 and settles at 1 - λ = 0.001. A fixed
    PyTorch momentum of 0.001 would keep the initial 0 / 1 statistics for thousands of
    iterations, so short runs would evaluate with wrong statistics; tracking f here makes
    the running mean and variance equal Caffe's at every iteration (both use the unbiased
    batch variance for the running estimate).
    """

    def __init__(
        self, channels: int, fraction: float = MOVING_AVERAGE_FRACTION, eps: float = BN_EPS
    ) -> None:
        super().__init__(channels, eps=eps, momentum=1.0 - fraction, affine=False)
        self.fraction = fraction
        self.register_buffer("caffe_factor", torch.zeros(()))

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            with torch.no_grad():
                self.caffe_factor.mul_(self.fraction).add_(1.0)
            self.momentum = 1.0 / float(self.caffe_factor)
        return super().forward(x)


class Scale(nn.Module):
    """Caffe Scale with bias_term: per-channel y = weight * x + bias (the BN's affine)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x * self.weight.view(shape) + self.bias.view(shape)


class Eltwise(nn.Module):
    """Caffe Eltwise SUM of two bottoms; a module only so hooks can find it by name."""

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return a + b


class GlobalAvgPool(nn.Module):
    """Pooling AVE with global_pooling, flattened to (N, C) as InnerProduct sees it."""

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=(2, 3))


class CifarResNet(nn.Module):
    """The CIFAR ResNet ``spec`` chooses, built from :func:`resnet_layout`, modules named as
    in Caffe. ``spec`` is a :class:`ResNetLayout` or anything with the same choices (a
    ``pyirg.arch.ResNetSpec``); ``model.layout`` is this module's description of it."""

    def __init__(self, spec: ResNetChoice) -> None:
        super().__init__()
        self.layout = layout = resnet_layout(
            spec.depth,
            spec.width,
            spec.num_classes,
            spec.in_channels,
            spec.numbering_depth,
            spec.kept_blocks,
        )
        self.layers = nn.ModuleDict()
        self._add_unit(layout.stem)
        for block in layout.blocks:
            for unit in block.units:
                self._add_unit(unit)
            self.layers[block.eltwise] = Eltwise()
            self.layers[block.relu_name] = nn.ReLU()
        self.layers[layout.pool] = GlobalAvgPool()
        self.layers[layout.fc] = nn.Linear(layout.channels[-1], layout.num_classes)
        self._init_like_caffe()

    def _add_unit(self, unit: Unit) -> None:
        self.layers[unit.conv] = nn.Conv2d(
            unit.in_channels,
            unit.out_channels,
            unit.kernel,
            stride=unit.stride,
            padding=unit.pad,
            bias=True,
        )
        self.layers[unit.bn] = CaffeBatchNorm2d(unit.out_channels)
        self.layers[unit.scale] = Scale(unit.out_channels)
        if unit.relu_name is not None:
            self.layers[unit.relu_name] = nn.ReLU()

    def _init_like_caffe(self) -> None:
        """The prototxts' fillers: msra (std sqrt(2 / fan_in)) weights, zero biases."""
        for module in self.layers.values():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def _unit(self, unit: Unit, x: Tensor) -> Tensor:
        x = self.layers[unit.scale](self.layers[unit.bn](self.layers[unit.conv](x)))
        return x if unit.relu_name is None else self.layers[unit.relu_name](x)

    def forward(
        self, x: Tensor, return_features: bool = False
    ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        """Logits, or (logits, feats) with every Eltwise (post-ReLU), Pooling1 and logits.

        Eltwise outputs are taken after the ReLU because Caffe's ReLU works in place on the
        Eltwise blob, so that is what a prototxt reading "Eltwise3" sees.
        """
        layout = self.layout
        if x.dim() != 4 or x.shape[1] != layout.in_channels:
            raise ValueError(
                f"CifarResNet: input must be (N, {layout.in_channels}, H, W), got {tuple(x.shape)}"
            )
        feats: dict[str, Tensor] = {}
        x = self._unit(layout.stem, x)
        for block in layout.blocks:
            shortcut = x if block.shortcut is None else self._unit(block.shortcut, x)
            out = self._unit(block.conv_b, self._unit(block.conv_a, x))
            x = self.layers[block.relu_name](self.layers[block.eltwise](out, shortcut))
            feats[block.eltwise] = x
        pooled = self.layers[layout.pool](x)
        logits = self.layers[layout.fc](pooled)
        if not return_features:
            return logits
        feats[layout.pool] = pooled
        feats["logits"] = logits
        return logits, feats


_BLOBS: dict[type, dict[str, int]] = {
    nn.Conv2d: {"weight": 0, "bias": 1},
    CaffeBatchNorm2d: {"running_mean": 0, "running_var": 1},
    Scale: {"weight": 0, "bias": 1},
    nn.Linear: {"weight": 0, "bias": 1},
}


def caffe_name_map(model: CifarResNet) -> dict[str, tuple[str, int]]:
    """state_dict key -> (Caffe layer name, blob index) for every tensor Caffe stores."""
    out: dict[str, tuple[str, int]] = {}
    for name, module in model.layers.items():
        for attr, blob in _BLOBS.get(type(module), {}).items():
            out[f"layers.{name}.{attr}"] = (name, blob)
    return out


def stage_transform_pairs(layout: ResNetLayout) -> list[tuple[str, str]]:
    """The paper's IRG-t pairs: (last block, first block) output of each stage.

    The transformation relates a stage's input-side and output-side features of the same
    instance, so both ends lie in one stage (same channels). The last stage's last block
    is named by its pooled blob, "Pooling1", as in the released IRG_Transformation.prototxt
    (pooling that block's Eltwise gives the same values).
    """
    pairs = []
    for stage in range(3):
        blocks = [b for b in layout.blocks if b.stage == stage]
        if len(blocks) < 2:
            raise ValueError(
                f"stage_transform_pairs: ResNet-{layout.depth} has a stage with one block, "
                "whose first and last block coincide (the transformation would be "
                "identically 0)"
            )
        last = layout.pool if stage == 2 else blocks[-1].eltwise
        pairs.append((last, blocks[0].eltwise))
    return pairs
