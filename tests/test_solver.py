"""Tests of the solvers (pyirg.solver): the schedule of He et al. 2016."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("GLOG_minloglevel", "2")
caffe = pytest.importorskip("caffe")
from caffe.proto import caffe_pb2  # noqa: E402
from google.protobuf import text_format  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def test_solvers_follow_he_et_al() -> None:
    for name in ("ResNet-20", "IRG", "IRG_Transformation"):
        sp = caffe_pb2.SolverParameter()
        text_format.Merge((REPO / "prototxt" / f"solver_{name}.prototxt").read_text(), sp)
        assert sp.net == f"prototxt/{name}.prototxt"
        assert (sp.type, sp.lr_policy) == ("SGD", "multistep")
        assert sp.base_lr == pytest.approx(0.1) and sp.gamma == pytest.approx(0.1)
        assert sp.momentum == pytest.approx(0.9) and sp.weight_decay == pytest.approx(1e-4)
        assert list(sp.stepvalue) == [32000, 48000] and sp.max_iter == 64000
        assert list(sp.test_iter) == [100]  # 10000 CIFAR test images / TEST batch 100
