"""Tests of the CIFAR ResNets as NetSpecs (pyirg.netspec): one preprocessing per data set
everywhere (the deploy net's weights by name: tests/test_distill.py).
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("GLOG_minloglevel", "2")
caffe = pytest.importorskip("caffe")

from pyirg.arch import cifar_resnet  # noqa: E402
from pyirg.data.core import DATASETS  # noqa: E402
from pyirg.netspec import DataConfig, train_net  # noqa: E402


def test_each_data_set_has_one_preprocessing_everywhere() -> None:
    """Generated digits LMDB nets scale and (don't) mirror as the main job trains."""
    from pyirg import experiment

    digits = DATASETS["digits"]
    assert experiment.SCALE == digits.scale == pytest.approx(1 / 255)
    assert experiment.PAD == digits.pad
    net = train_net(cifar_resnet(8, 0.25, 10, 1), DataConfig(kind="lmdb", dataset=digits), "d")
    transforms = [layer.transform_param for layer in net.layer if layer.type == "Data"]
    assert len(transforms) == 2
    for t in transforms:
        assert t.scale == pytest.approx(1 / 255) and not t.mirror
    cifar = train_net(cifar_resnet(8, 0.25, 10, 3), DataConfig(kind="lmdb"), "c")
    train = next(layer for layer in cifar.layer if layer.type == "Data")
    assert train.transform_param.mirror and not train.transform_param.HasField("scale")
