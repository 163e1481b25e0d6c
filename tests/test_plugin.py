"""The plugin build: our layers as a shared library beside an unmodified Caffe.

CMakeLists.txt builds libirg_caffe_layers.so and the gtest binary against the
base tree (stock Caffe + the caffe.proto patch only). Loading the library with
RTLD_GLOBAL before a net is built is what registers the two layer types.
"""

from __future__ import annotations

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
