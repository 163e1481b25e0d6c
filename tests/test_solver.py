"""Tests of the solvers (pyirg.solver): the schedule of He et al. 2016."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

os.environ.setdefault("GLOG_minloglevel", "2")
caffe = pytest.importorskip("caffe")
from caffe.proto import caffe_pb2  # noqa: E402
from google.protobuf import text_format  # noqa: E402

from pyirg.solver import make_solver  # noqa: E402

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


def test_the_cosine_stand_in_stays_near_the_cosine() -> None:
    """REFILLED's stage 1 decays by a cosine from lr1 to 0.1 lr1; Caffe's multistep
    stand-in must stay within floor ** (1 / (2 levels)) of it at every iteration."""
    from pyirg.solver import cosine_schedule

    lr1, iters, levels = 0.1, 4000, 16
    sched = cosine_schedule(lr1, iters, levels=levels, momentum=0.9, type="Nesterov")
    assert sched.type == "Nesterov" and len(sched.stepvalues) == levels
    # Steps fall on whole iterations: allow one iteration's relative change of the cosine.
    slack = math.pi * 0.9 / (2 * iters) / 0.1
    bound = 0.1 ** (1 / (2 * levels)) * (1 - slack)
    for t in range(iters):
        cosine = lr1 * (0.1 + 0.9 * (1 + math.cos(math.pi * t / iters)) / 2)
        caffe = lr1 * sched.gamma ** sum(t >= s for s in sched.stepvalues)  # Caffe multistep
        assert bound <= caffe / cosine <= 1 / bound, t
    solver = make_solver("net.prototxt", sched)
    assert solver.type == "Nesterov" and list(solver.stepvalue) == list(sched.stepvalues)
