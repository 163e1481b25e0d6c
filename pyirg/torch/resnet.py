"""The CIFAR ResNet of :mod:`pyirg.arch` in PyTorch, with Caffe's layer names.

Every Caffe layer that computes something (Convolution, BatchNorm, Scale, ReLU, Eltwise,
Pooling, InnerProduct) is a module of the same name in ``model.layers``, so weights move
between the two frameworks by name alone and features can be requested by the names the
prototxts use.

Name map (PyTorch state_dict key -> Caffe layer, blob index), see :func:`caffe_name_map`:

=================================== ========================
``layers.ConvolutionK.weight``      ConvolutionK, blob 0
``layers.ConvolutionK.bias``        ConvolutionK, blob 1
``layers.BatchNormK.running_mean``  BatchNormK, blob 0
``layers.BatchNormK.running_var``   BatchNormK, blob 1
``layers.ScaleK.weight``            ScaleK, blob 0
``layers.ScaleK.bias``              ScaleK, blob 1
``layers.InnerProduct1.weight``     InnerProduct1, blob 0 (out, in)
``layers.InnerProduct1.bias``       InnerProduct1, blob 1
=================================== ========================

Caffe's BatchNorm keeps unnormalized running sums in blobs 0 and 1 and their weight in
blob 2 (the "scale factor"); it divides by blob 2 at use. The statistics here are already
divided, so an exporter writes them with blob 2 = 1. The ``caffe_factor`` buffer (and
``num_batches_tracked``) have no blob.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pyirg.arch import ConvSpec, ResNetSpec, cifar_resnet

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
    """CIFAR ResNet built from a :class:`~pyirg.arch.ResNetSpec`, modules named as in Caffe."""

    def __init__(self, spec: ResNetSpec) -> None:
        super().__init__()
        self.spec = spec
        self.layers = nn.ModuleDict()
        self._add_unit(spec.stem)
        for block in spec.blocks:
            for unit in (block.proj, block.conv_a, block.conv_b):
                if unit is not None:
                    self._add_unit(unit)
            self.layers[block.eltwise] = Eltwise()
            self.layers[block.relu] = nn.ReLU()
        self.layers[spec.pool] = GlobalAvgPool()
        self.layers[spec.fc] = nn.Linear(spec.feature_channels, spec.num_classes)
        self._init_like_caffe()

    @classmethod
    def from_arch(
        cls,
        depth: int = 20,
        width: float = 1.0,
        num_classes: int = 10,
        in_channels: int = 3,
        numbering_depth: int | None = None,
    ) -> CifarResNet:
        """Shortcut for ``CifarResNet(cifar_resnet(...))``."""
        return cls(cifar_resnet(depth, width, num_classes, in_channels, numbering_depth))

    def _add_unit(self, unit: ConvSpec) -> None:
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
        if unit.relu is not None:
            self.layers[unit.relu] = nn.ReLU()

    def _init_like_caffe(self) -> None:
        """The prototxts' fillers: msra (std sqrt(2 / fan_in)) weights, zero biases."""
        for module in self.layers.values():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def _unit(self, unit: ConvSpec, x: Tensor) -> Tensor:
        x = self.layers[unit.scale](self.layers[unit.bn](self.layers[unit.conv](x)))
        return x if unit.relu is None else self.layers[unit.relu](x)

    def forward(
        self, x: Tensor, return_features: bool = False
    ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        """Logits, or (logits, feats) with every Eltwise (post-ReLU), Pooling1 and logits.

        Eltwise outputs are taken after the ReLU because Caffe's ReLU works in place on the
        Eltwise blob, so that is what a prototxt reading "Eltwise3" sees.
        """
        if x.dim() != 4 or x.shape[1] != self.spec.in_channels:
            raise ValueError(
                f"CifarResNet: input must be (N, {self.spec.in_channels}, H, W), "
                f"got {tuple(x.shape)}"
            )
        feats: dict[str, Tensor] = {}
        x = self._unit(self.spec.stem, x)
        for block in self.spec.blocks:
            shortcut = x if block.proj is None else self._unit(block.proj, x)
            out = self._unit(block.conv_b, self._unit(block.conv_a, x))
            x = self.layers[block.relu](self.layers[block.eltwise](out, shortcut))
            feats[block.eltwise] = x
        pooled = self.layers[self.spec.pool](x)
        logits = self.layers[self.spec.fc](pooled)
        if not return_features:
            return logits
        feats[self.spec.pool] = pooled
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


def stage_transform_pairs(spec: ResNetSpec) -> list[tuple[str, str]]:
    """IRG-t pairs as the authors chose them: (last block, first block) of each stage.

    The last stage's last block is named by its pooled blob, "Pooling1", as in the
    released IRG_Transformation.prototxt (pooling Eltwise9 gives the same values).
    """
    if any(sum(b.stage == s for b in spec.blocks) < 2 for s in range(3)):
        raise ValueError(
            f"stage_transform_pairs: ResNet-{spec.depth} has a stage with one block, whose "
            "first and last block coincide (the transformation would be identically 0)"
        )
    pairs = []
    for stage in range(3):
        blocks = [b for b in spec.blocks if b.stage == stage]
        last = spec.pool if stage == 2 else blocks[-1].eltwise
        pairs.append((last, blocks[0].eltwise))
    return pairs
