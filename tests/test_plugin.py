"""The plugin build: our layers as a shared library beside an unmodified Caffe.

CMakeLists.txt builds libirg_caffe_layers.so and the gtest binary against the
base tree (stock Caffe + the caffe.proto patch only). Loading the library with
RTLD_GLOBAL before a net is built is what registers the layer types (IRG and
REFILLED).
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import pytest
from conftest import REPO, run

NET_SCRIPT = """
import ctypes, sys, tempfile
if sys.argv[1]:
    ctypes.CDLL(sys.argv[1], ctypes.RTLD_GLOBAL)
import caffe
from caffe import layers as L
n = caffe.NetSpec()
n.x = L.Input(shape=dict(dim=[3, 1]))
n.y = L.Input(shape=dict(dim=[3, 1]))
n.a = L.BatchEuclideanMap(n.x)
n.t = L.BatchEuclideanVector(n.x, n.y, irg_param=dict(normalize=2))
f = tempfile.NamedTemporaryFile("w", suffix=".prototxt", delete=False)
f.write(str(n.to_proto()))
f.close()
net = caffe.Net(f.name, caffe.TEST)
net.blobs["x"].data[:, 0] = [0, 1, 3]
net.blobs["y"].data[:, 0] = [1, 1, 1]
out = net.forward()
print("A", " ".join("%g" % v for v in out["a"].ravel()))
print("T", " ".join("%g" % v for v in out["t"].ravel()))
"""


REFILLED_SCRIPT = """
import ctypes, sys, tempfile
ctypes.CDLL(sys.argv[1], ctypes.RTLD_GLOBAL)
import caffe
from caffe import layers as L
from caffe.proto import caffe_pb2
R = caffe_pb2.RelationParameter
n = caffe.NetSpec()
n.s = L.Input(shape=dict(dim=[4, 2]))
n.t = L.Input(shape=dict(dim=[4, 2]))
n.y = L.Input(shape=dict(dim=[4]))
n.z = L.Input(shape=dict(dim=[4, 3]))
n.rel = L.TripletRelationLoss(n.s, n.t, n.y,
    relation_param=dict(mode=R.TUPLE, margin=0.6, tau1=1, scale=10))
n.kd = L.LocalCenterKDLoss(n.z, n.t, n.y, param=[dict(lr_mult=0, decay_mult=0)],
    relation_param=dict(centers=R.LOCAL))
f = tempfile.NamedTemporaryFile("w", suffix=".prototxt", delete=False)
f.write(str(n.to_proto()))
f.close()
net = caffe.Net(f.name, caffe.TRAIN)
net.blobs["s"].data[...] = [[3, 0], [2.4, 1.8], [0.6, 0.8], [1.2, -1.6]]
net.blobs["t"].data[...] = [[2, 0], [0, 0.5], [-1, 0], [0, -7]]
net.blobs["y"].data[...] = [0, 0, 1, 1]
net.blobs["z"].data[...] = [[1, 0, 2], [0, 1, 0], [2, 2, 2], [-1, 0, 1]]
out = net.forward()
print("REL %r" % float(out["rel"]))
print("KD %r" % float(out["kd"]))
print("CENTERS", net.params["kd"][0].data.shape)
"""


@pytest.fixture(scope="module")
def plugin(caffe_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    build = REPO / "build" / "plugin"
    for cmd in (
        ["cmake", "-S", str(REPO), "-B", str(build), f"-DCAFFE_ROOT={caffe_base}"],
        ["cmake", "--build", str(build), "-j2"],
    ):
        assert run(cmd).returncode == 0, " ".join(cmd)
    lib = build / "libirg_caffe_layers.so"
    assert lib.exists()
    return lib


def _base_env(caffe_base: Path) -> dict[str, str]:
    """The environment of a user of the base tree: its libcaffe, its pycaffe."""
    return dict(
        os.environ,
        PYTHONPATH=str(caffe_base / "python"),
        LD_LIBRARY_PATH=str(caffe_base / ".build_release" / "lib"),
        GLOG_minloglevel="2",
    )


def test_plugin_gtests_pass(caffe_base: Path, plugin: Path) -> None:
    proc = run(
        ["ctest", "--test-dir", str(plugin.parent), "--output-on-failure"],
        env=_base_env(caffe_base),
    )
    assert proc.returncode == 0
    assert "100% tests passed" in proc.stdout


def _pycaffe(caffe_base: Path, lib: str) -> object:
    return run([sys.executable, "-c", NET_SCRIPT, lib], env=_base_env(caffe_base))


def test_plugin_registers_layers_in_pycaffe(caffe_base: Path, plugin: Path) -> None:
    proc = _pycaffe(caffe_base, str(plugin))
    assert proc.returncode == 0
    # x = 0, 1, 3: squared distances over their max 9; y = 1: squared moves 1, 0, 4.
    expected_a = [0, 1 / 9, 1, 1 / 9, 0, 4 / 9, 1, 4 / 9, 0]
    got_a = [float(v) for v in proc.stdout.split("A ")[1].split("\n")[0].split()]
    assert got_a == pytest.approx(expected_a, abs=1e-6)
    got_t = [float(v) for v in proc.stdout.split("T ")[1].split()]
    assert got_t == pytest.approx([1, 0, 4])


def test_base_tree_alone_does_not_know_the_layers(caffe_base: Path) -> None:
    proc = _pycaffe(caffe_base, "")
    assert proc.returncode != 0
    assert "Unknown layer type: BatchEuclideanMap" in proc.stderr


def test_plugin_runs_refilled_layers_in_pycaffe(caffe_base: Path, plugin: Path) -> None:
    proc = run([sys.executable, "-c", REFILLED_SCRIPT, str(plugin)], env=_base_env(caffe_base))
    assert proc.returncode == 0
    # The gtest's hand-computed tuple: anchor 0, positive 1, negatives 2 and 3.
    lt = [-math.sqrt(2), -2, -math.sqrt(2)]
    ls = [-math.sqrt(0.4), -math.sqrt(0.8), -math.sqrt(0.8)]
    zt, zs = sum(map(math.exp, lt)), sum(map(math.exp, ls))
    kl = sum(math.exp(a) / zt * (a - math.log(zt) - (b - math.log(zs))) for a, b in zip(lt, ls))
    got = float(proc.stdout.split("REL ")[1].split()[0])
    assert got == pytest.approx(10 * kl, rel=1e-5)
    kd = float(proc.stdout.split("KD ")[1].split()[0])
    assert math.isfinite(kd) and kd >= 0
    assert "CENTERS (3, 2)" in proc.stdout
