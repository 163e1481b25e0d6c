"""Caffe's gtest binary, built in the drop-in tree with our tests in it.

Our layer tests must all pass and be the ones we expect (every normalize x
squared gradient check, in float and double); Caffe's own CPU suite must still
pass with our patch and layers in the tree, so the drop-in breaks nothing.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import run

MODES = ["MaxSquared", "MaxL2", "MeanSquared", "MeanL2", "NoneSquared", "NoneL2"]


def _testbin(caffe_root: Path) -> Path:
    binary = caffe_root / ".build_release" / "test" / "test_all.testbin"
    if not binary.exists():
        pytest.skip("test_all.testbin not built: run bash tools/build_caffe.sh --with-tests")
    return binary


def _passed(output: str) -> int:
    match = re.search(r"\[  PASSED  \] (\d+) tests?\.", output)
    assert match, output[-3000:]
    return int(match.group(1))


def test_irg_layer_tests_are_all_there(caffe_root: Path) -> None:
    listing = run([str(_testbin(caffe_root)), "--gtest_list_tests"], cwd=caffe_root).stdout
    # TestDtypesAndDevices lists CPUDevice<float> (instance 0) and CPUDevice<double> (1).
    for layer in ("BatchEuclideanMapLayerTest", "BatchEuclideanVectorLayerTest"):
        for instance, dtype in ((0, "float"), (1, "double")):
            block = re.search(rf"^{layer}/{instance}\.[^\n]*\n((?:  .*\n)+)", listing, re.M)
            assert block, f"{layer} <{dtype}> missing from the test binary"
            names = block.group(1)
            for mode in MODES:
                assert f"TestGradient{mode}" in names, (layer, dtype, mode)
            for name in (
                "TestForwardHandComputed",
                "TestReleasedBackwardFormula",
                "TestZeroNormalizerGivesZeros",
                "TestSingleInstance",
            ):
                assert name in names, (layer, dtype, name)
    assert "TestGradient4D" in listing
    assert "BatchEuclideanMapLayerDeathTest" in listing
    assert "BatchEuclideanVectorLayerDeathTest" in listing


def test_irg_layer_gtests_pass(caffe_root: Path) -> None:
    proc = run([str(_testbin(caffe_root)), "--gtest_filter=*BatchEuclidean*"], cwd=caffe_root)
    assert proc.returncode == 0, "IRG layer gtests failed (output above)"
    assert _passed(proc.stdout) >= 66


def test_caffe_cpu_suite_still_passes(caffe_root: Path) -> None:
    """What Caffe's `make runtest` runs on a CPU_ONLY build, on our tree."""
    proc = run([str(_testbin(caffe_root)), "--gtest_filter=-*GPU*"], cwd=caffe_root)
    assert proc.returncode == 0, "Caffe's own test suite failed in the drop-in tree"
    # 1162 tests on the stock tree plus ours.
    assert _passed(proc.stdout) >= 1162 + 66


def _has_gpu() -> bool:
    smi = shutil.which("nvidia-smi")
    return bool(smi) and subprocess.run([smi, "-L"], capture_output=True).returncode == 0


@pytest.mark.skipif(
    not _has_gpu(),
    reason="no CUDA GPU on this machine: the GPU gtests "
    "are compiled by test_cuda_build.py but cannot run here",
)
def test_gpu_gtests(caffe_root: Path) -> None:
    binary = _testbin(caffe_root)
    listing = run([str(binary), "--gtest_list_tests"]).stdout
    if "GPUDevice" not in listing:
        pytest.skip("this Caffe build is CPU_ONLY: build a CUDA Caffe tree to run GPU tests")
    # TestDtypesAndDevices: instances 2 and 3 are GPUDevice<float> and <double>.
    proc = run(
        [str(binary), "--gtest_filter=*BatchEuclidean*/2.*:*BatchEuclidean*/3.*"], cwd=caffe_root
    )
    assert proc.returncode == 0
