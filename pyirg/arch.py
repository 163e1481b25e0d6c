"""The Caffe side's description of the CIFAR ResNet-(6n+2) family.

The Caffe generator (NetSpec) builds every net from :func:`cifar_resnet`. The
PyTorch reference (:mod:`pyirg.torch.resnet`) has its own description of the
same family, written independently so that it can catch a bug here; a test
holds the two against each other and against a hand-written ResNet-20 table,
and weights transfer between them by name.

Naming follows the authors' ResNet-20.prototxt: layers are numbered in network
order (``Convolution1``, ``BatchNorm1``, ``Scale1``, ``ReLU1``, ``Eltwise1``,
..., ``Pooling1``, ``InnerProduct1``); in the first block of stages 2 and 3 the
1x1 strided projection shortcut is numbered before the block's two 3x3
convolutions; a block's ReLUs are the one after its first convolution and the
one after its Eltwise sum.

A shallower student can keep the numbering of a deeper reference network
(``numbering_depth``), as the authors' IRG_Transformation.prototxt does for
ResNet-14 under ResNet-20: each kept block takes the numbers that block had in
the reference, leaving gaps. Which blocks are kept is ``kept_blocks``; the
default for 14-under-20 is the authors' choice (stage 1: blocks 1 and 3,
stage 2: blocks 1 and 2, stage 3: blocks 1 and 3), otherwise the first blocks of
each stage (the first block of a stage must be kept: it owns the projection).
"""

from __future__ import annotations

from dataclasses import dataclass, field

STAGE_WIDTHS = (16, 32, 64)
WIDTHS = (1.0, 0.5, 0.375, 0.25)
#: Blocks kept, per stage, by the authors' ResNet-14 student numbered as ResNet-20.
AUTHORS_RESNET14_IN_20 = ((0, 2), (0, 1), (0, 2))


@dataclass(frozen=True)
class ConvSpec:
    """A Convolution + BatchNorm + Scale(bias) unit, optionally followed by ReLU."""

    conv: str
    bn: str
    scale: str
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    pad: int
    relu: str | None = None


@dataclass(frozen=True)
class BlockSpec:
    """A basic residual block: conv_a (+ReLU), conv_b, optional projection, sum, ReLU."""

    stage: int
    index: int  # position in its stage, counted in the reference numbering
    conv_a: ConvSpec
    conv_b: ConvSpec
    proj: ConvSpec | None
    eltwise: str
    relu: str


@dataclass(frozen=True)
class ResNetSpec:
    """A whole CIFAR ResNet: stem, blocks, global average pooling, classifier."""

    depth: int
    width: float
    num_classes: int
    in_channels: int
    stem: ConvSpec
    blocks: tuple[BlockSpec, ...]
    pool: str = "Pooling1"
    fc: str = "InnerProduct1"
    widths: tuple[int, int, int] = field(default=STAGE_WIDTHS)
    #: The numbering and kept blocks it was built with (resolved), so that the PyTorch
    #: reference (:mod:`pyirg.torch.resnet`) can build the same net from its own
    #: description, reading only the choices that define the net.
    numbering_depth: int | None = None
    kept_blocks: tuple[tuple[int, ...], ...] | None = None

    @property
    def feature_channels(self) -> int:
        """Channels of the pooled feature fed to the classifier."""
        return self.widths[-1]

    def convs(self) -> list[ConvSpec]:
        """Every conv unit in network (and numbering) order."""
        out = [self.stem]
        for block in self.blocks:
            out.extend(u for u in (block.proj, block.conv_a, block.conv_b) if u is not None)
        return out


def blocks_per_stage(depth: int) -> int:
    """n in depth = 6n + 2, with a clear error for depths outside the family."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(
            f"CIFAR ResNet depth must be 6n+2 with n >= 1 (8, 14, 20, ...), got {depth}"
        )
    return (depth - 2) // 6


def stage_widths(width: float) -> tuple[int, int, int]:
    """Channel counts of the three stages for a width multiplier."""
    if width <= 0:
        raise ValueError(f"width multiplier must be positive, got {width}")
    widths = tuple(int(round(w * width)) for w in STAGE_WIDTHS)
    if min(widths) < 1:
        raise ValueError(f"width multiplier {width} leaves a stage with no channels")
    return widths  # type: ignore[return-value]


def _checked_kept(
    kept: tuple[tuple[int, ...], ...], n: int, ref_n: int
) -> tuple[tuple[int, ...], ...]:
    """``kept``, if it keeps ``n`` of the ``ref_n`` blocks of each stage, the first always."""
    if len(kept) != 3 or any(len(k) != n for k in kept):
        raise ValueError(f"kept_blocks must list {n} blocks for each of 3 stages, got {kept}")
    for stage, k in enumerate(kept):
        if list(k) != sorted(set(k)) or k[0] != 0 or k[-1] >= ref_n:
            raise ValueError(
                f"kept_blocks for stage {stage + 1} must be increasing, start at 0 and stay "
                f"below {ref_n}: got {k}"
            )
    return kept


def _unit(cin: int, cout: int, kernel: int, stride: int, number: int, relu: int | None) -> ConvSpec:
    """Convolution/BatchNorm/Scale number ``number`` (and ReLU ``relu``), "same" padding."""
    return ConvSpec(
        conv=f"Convolution{number}",
        bn=f"BatchNorm{number}",
        scale=f"Scale{number}",
        in_channels=cin,
        out_channels=cout,
        kernel=kernel,
        stride=stride,
        pad=kernel // 2,
        relu=None if relu is None else f"ReLU{relu}",
    )


def cifar_resnet(
    depth: int = 20,
    width: float = 1.0,
    num_classes: int = 10,
    in_channels: int = 3,
    numbering_depth: int | None = None,
    kept_blocks: tuple[tuple[int, ...], ...] | None = None,
) -> ResNetSpec:
    """Describe ResNet-``depth`` x ``width``, numbered as ResNet-``numbering_depth``."""
    n = blocks_per_stage(depth)
    ref_n = blocks_per_stage(numbering_depth or depth)
    if ref_n < n:
        raise ValueError(f"cannot number ResNet-{depth} as the shallower ResNet-{numbering_depth}")
    if not kept_blocks:
        first_n = tuple(tuple(range(n)) for _ in range(3))
        kept_blocks = AUTHORS_RESNET14_IN_20 if (n, ref_n) == (2, 3) else first_n
    kept = _checked_kept(kept_blocks, n, ref_n)
    widths = stage_widths(width)
    stem = _unit(in_channels, widths[0], 3, 1, number=1, relu=1)
    conv_no, relu_no, elt_no = 2, 2, 1  # the numbers the next block takes
    blocks = []
    cin = widths[0]
    for stage in range(3):
        cout = widths[stage]
        for ref_index in range(ref_n):
            has_proj = ref_index == 0 and stage > 0
            stride = 2 if has_proj else 1
            if ref_index in kept[stage]:
                proj = _unit(cin, cout, 1, stride, conv_no, None) if has_proj else None
                c = conv_no + (1 if has_proj else 0)
                blocks.append(
                    BlockSpec(
                        stage=stage,
                        index=ref_index,
                        conv_a=_unit(cin, cout, 3, stride, c, relu_no),
                        conv_b=_unit(cout, cout, 3, 1, c + 1, None),
                        proj=proj,
                        eltwise=f"Eltwise{elt_no}",
                        relu=f"ReLU{relu_no + 1}",
                    )
                )
                cin = cout
            conv_no += 3 if has_proj else 2
            relu_no += 2
            elt_no += 1
    return ResNetSpec(
        depth=depth,
        width=width,
        num_classes=num_classes,
        in_channels=in_channels,
        stem=stem,
        blocks=tuple(blocks),
        widths=widths,
        numbering_depth=numbering_depth or depth,
        kept_blocks=tuple(tuple(k) for k in kept),
    )
