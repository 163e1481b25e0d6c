"""Tests of the wide ResNets and MobileNet-v1 as Caffe nets (pyirg.backbones): shapes, the
weights each layer holds against counts written here from the papers' definitions, and
what freezing a teacher changes."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("caffe")
from caffe import layers as L
from caffe.net_spec import NetSpec

from pyirg.backbones import MOBILENET_UNITS, MobileNetSpec, WideResNetSpec, add_backbone
from pyirg.caffeio import caffe_net


def _net(spec, size: int, frozen: bool = False, batch: int = 2):
    ns = NetSpec()
    ns.data = L.Input(shape=[{"dim": [batch, spec.in_channels, size, size]}])
    add_backbone(ns, spec, ns.data, "stu_", frozen)
    return ns.to_proto(), caffe_net(ns.to_proto(), "TRAIN")


def _conv_weights(net) -> int:
    return sum(
        net.params[name][0].data.size
        for name, layer in zip(net._layer_names, net.layers)
        if layer.type == "Convolution"
    )


@pytest.mark.parametrize(("depth", "widen"), [(16, 1), (16, 2), (10, 3)])
def test_wide_resnet_shapes_and_weights(depth: int, widen: int) -> None:
    spec = WideResNetSpec(depth, widen, num_classes=100)
    _, net = _net(spec, 32)
    net.forward()
    assert net.blobs["stu_pool"].data.shape == (2, 64 * widen, 1, 1)
    assert net.blobs["stu_fc"].data.shape == (2, 100)
    # From the WRN paper: stem 3x3x3x16; per stage n blocks of two 3x3 convs, the first
    # block of a stage whose width changes with a 1x1 projection.
    n, expected, cin = (depth - 4) // 6, 3 * 9 * 16, 16
    for cout in (16 * widen, 32 * widen, 64 * widen):
        expected += cin * cout * 9 + cout * cout * 9 + (cin * cout if cin != cout else 0)
        expected += (n - 1) * 2 * cout * cout * 9
        cin = cout
    assert _conv_weights(net) == expected


@pytest.mark.parametrize("width", [1.0, 0.25])
def test_mobilenet_shapes_and_weights(width: float) -> None:
    spec = MobileNetSpec(width, num_classes=200)
    _, net = _net(spec, 64, batch=1)
    net.forward()
    c = [max(8, int(b * width)) for b in (32, *(u for u, _ in MOBILENET_UNITS))]
    assert net.blobs["stu_pool"].data.shape == (1, c[-1], 1, 1)
    assert net.blobs["stu_fc"].data.shape == (1, 200)
    assert net.blobs["stu_conv14_pw"].data.shape[2:] == (2, 2)  # five stride-2 steps of 64
    expected = 3 * 9 * c[0] + sum(9 * a + a * b for a, b in zip(c[:-1], c[1:]))
    assert _conv_weights(net) == expected


def test_a_frozen_backbone_trains_nothing_and_drops_no_units() -> None:
    proto, _ = _net(WideResNetSpec(16, 1, dropout=0.3), 32, frozen=True)
    assert not [la.name for la in proto.layer if la.type == "Dropout"]
    for layer in proto.layer:
        assert all(p.lr_mult == 0 and p.decay_mult == 0 for p in layer.param), layer.name
        if layer.type == "BatchNorm":
            assert layer.batch_norm_param.use_global_stats
    trained, _ = _net(WideResNetSpec(16, 1, dropout=0.3), 32)
    assert len([la for la in trained.layer if la.type == "Dropout"]) == 6


def test_bad_descriptions_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="6n \\+ 4"):
        WideResNetSpec(depth=20)
    with pytest.raises(ValueError, match="dropout"):
        WideResNetSpec(dropout=1.0)
    with pytest.raises(ValueError, match="width"):
        MobileNetSpec(width=0)


def test_the_pre_activated_input_feeds_branch_and_projection() -> None:
    """Pre-activation: where a block projects, conv1 and the projection read the same
    BatchNorm-ReLU output; an identity shortcut reads the block's input itself."""
    proto, net = _net(WideResNetSpec(16, 2), 32)
    layers = {la.name: la for la in proto.layer}
    assert layers["stu_block1_1_conv1"].bottom == layers["stu_block1_1_proj"].bottom
    assert layers["stu_block1_2_sum"].bottom[0] == "stu_block1_1_sum"
    net.forward()
    assert np.isfinite(net.blobs["stu_fc"].data).all()
