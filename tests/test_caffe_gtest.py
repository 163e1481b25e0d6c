"""Caffe's gtest binary, built in the drop-in tree with our tests in it.

Our layer tests must all pass and be the ones we expect (every normalize x
squared gradient check of the IRG layers, every mode of the REFILLED layers, in
float and double); Caffe's own CPU suite must still pass with our patch and
layers in the tree, so the drop-in breaks nothing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import REPO, run

MODES = ["MaxSquared", "MaxL2", "MeanSquared", "MeanL2", "NoneSquared", "NoneL2"]
# The REFILLED layers' typed tests that must be there for every device and dtype.
REFILLED_TESTS = {
    "TripletRelationLossLayerTest": (
        "TestGradientTriplet",
        "TestGradientTuple",
        "TestGradientTripletDefaults",
        "TestGradientTuple4D",
        "TestForwardHandComputed",
        "TestForwardTripletMatchesLoops",
        "TestForwardTupleMatchesLoops",
        "TestNoTripletGivesZeros",
        "TestOneClassGivesZeros",
        "TestTiedDistances",
        "TestGapAtMargin",
        "TestZeroRows",
        "TestLossWeight",
    ),
    "LocalCenterKDLossLayerTest": (
        "TestGradientGlobal",
        "TestGradientLocal",
        "TestGradientLocalWithBlob",
        "TestForwardBackwardHandComputed",
        "TestForwardGlobalMatchesLoops",
        "TestForwardLocalMatchesLoops",
        "TestOneClassGivesZeros",
        "TestExtremeInputsStayFinite",
    ),
}
REFILLED_DEATH_TESTS = {
    "TripletRelationLossLayerDeathTest": (
        "TestInstanceMismatchDies",
        "TestLabelCountDies",
        "TestNonIntegerLabelDies",
        "TestNegativeLabelDies",
        "TestNegativeMarginDies",
        "TestNonPositiveTau1Dies",
        "TestTeacherGradientDies",
        "TestLabelGradientDies",
    ),
    "LocalCenterKDLossLayerDeathTest": (
        "TestUnfilledCentersDie",
        "TestMissingParamSpecDies",
        "TestTrainedCentersDie",
        "TestWrongCenterShapeDies",
        "TestLabelOutOfRangeDies",
        "TestTeacherGradientDies",
    ),
}
GPU_VS_CPU_TESTS = {
    "BatchEuclideanMapLayerGPUvsCPUTest": (
        "TestRandomSizes",
        "TestAllInstancesEqual",
        "TestDeadRowsAndTies",
        "TestExactTies",
        "TestChangingN",
        "TestGradientSeveralBlocks",
        "TestIndicesPast32Bits",
    ),
    "BatchEuclideanVectorLayerGPUvsCPUTest": (
        "TestRandomSizes",
        "TestAllDistancesZero",
        "TestDeadRowsAndTies",
        "TestChangingN",
        "TestGradientSeveralBlocks",
    ),
}
OUR_FILTER = "*BatchEuclidean*:*TripletRelation*:*LocalCenterKD*"
# Tests in the CPU_ONLY binary: IRG 72 (60 typed, 12 death tests), REFILLED 88 (52
# typed, 36 death tests); a CUDA build adds the typed tests' GPU instances.
IRG_CPU, IRG_GPU, REFILLED_CPU, REFILLED_GPU = 72, 60, 88, 52


def _testbin(caffe_root: Path) -> Path:
    binary = caffe_root / ".build_release" / "test" / "test_all.testbin"
    if not binary.exists():
        pytest.skip("test_all.testbin not built: run bash tools/build_caffe.sh --with-tests")
    return binary


def _instance_tests(listing: str, layer: str, instance: int) -> str | None:
    """The test names gtest lists under ``layer/instance.``, or None if it lists none."""
    block = re.search(rf"^{layer}/{instance}\.[^\n]*\n((?:  .*\n)+)", listing, re.M)
    return block.group(1) if block else None


def _passed(output: str) -> int:
    match = re.search(r"\[  PASSED  \] (\d+) tests?\.", output)
    assert match, output[-3000:]
    return int(match.group(1))


def test_irg_layer_tests_are_all_there(caffe_root: Path) -> None:
    listing = run([str(_testbin(caffe_root)), "--gtest_list_tests"], cwd=caffe_root).stdout
    # TestDtypesAndDevices lists CPUDevice<float> (instance 0) and CPUDevice<double> (1).
    for layer in ("BatchEuclideanMapLayerTest", "BatchEuclideanVectorLayerTest"):
        for instance, dtype in ((0, "float"), (1, "double")):
            names = _instance_tests(listing, layer, instance)
            assert names, f"{layer} <{dtype}> missing from the test binary"
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


def test_refilled_layer_tests_are_all_there(caffe_root: Path) -> None:
    listing = run([str(_testbin(caffe_root)), "--gtest_list_tests"], cwd=caffe_root).stdout
    for tests in (REFILLED_TESTS, REFILLED_DEATH_TESTS):
        for layer, wanted in tests.items():
            for instance, dtype in ((0, "float"), (1, "double")):
                names = _instance_tests(listing, layer, instance)
                assert names, f"{layer} <{dtype}> missing from the test binary"
                for name in wanted:
                    assert name in names, (layer, dtype, name)


def test_irg_layer_gtests_pass(caffe_root: Path) -> None:
    proc = run([str(_testbin(caffe_root)), "--gtest_filter=*BatchEuclidean*"], cwd=caffe_root)
    assert proc.returncode == 0, "IRG layer gtests failed (output above)"
    assert _passed(proc.stdout) >= IRG_CPU


def test_refilled_layer_gtests_pass(caffe_root: Path) -> None:
    proc = run(
        [str(_testbin(caffe_root)), "--gtest_filter=*TripletRelation*:*LocalCenterKD*"],
        cwd=caffe_root,
    )
    assert proc.returncode == 0, "REFILLED layer gtests failed (output above)"
    assert _passed(proc.stdout) >= REFILLED_CPU


@pytest.mark.slow
def test_caffe_cpu_suite_still_passes(caffe_root: Path) -> None:
    """What Caffe's `make runtest` runs on a CPU_ONLY build, on our tree."""
    proc = run([str(_testbin(caffe_root)), "--gtest_filter=-*GPU*"], cwd=caffe_root)
    assert proc.returncode == 0, "Caffe's own test suite failed in the drop-in tree"
    # 1162 tests on the stock tree plus ours.
    assert _passed(proc.stdout) >= 1162 + IRG_CPU + REFILLED_CPU


def _has_gpu() -> bool:
    smi = shutil.which("nvidia-smi")
    return bool(smi) and subprocess.run([smi, "-L"], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def cuda_tree() -> tuple[Path, dict[str, str]]:
    """The drop-in tree built with CUDA (build_caffe.sh --cuda) and its library path."""
    root = Path(os.environ.get("IRG_CAFFE_CUDA") or REPO / ".caffe-cuda").resolve()
    binary = root / ".build_release" / "test" / "test_all.testbin"
    if not binary.exists():
        pytest.skip("no CUDA build (tools/build_caffe.sh --cuda, which needs nvcc)")
    libs = (root / ".irg-ld-library-path").read_text().strip()
    path = os.pathsep.join(p for p in (libs, os.environ.get("LD_LIBRARY_PATH", "")) if p)
    return binary, dict(os.environ, LD_LIBRARY_PATH=path)


def test_cuda_build_has_the_gpu_gtests(cuda_tree: tuple[Path, dict[str, str]]) -> None:
    binary, env = cuda_tree
    listing = run([str(binary), "--gtest_list_tests"], env=env).stdout
    # TestDtypesAndDevices with CUDA: instances 2 and 3 are GPUDevice<float> and <double>.
    for layer in ("BatchEuclideanMapLayerTest", "BatchEuclideanVectorLayerTest"):
        for instance in (2, 3):
            names = _instance_tests(listing, layer, instance)
            assert names, f"{layer}/{instance} (GPU) missing from the CUDA test binary"
            for mode in MODES:
                assert f"TestGradient{mode}" in names, (layer, instance, mode)
        for layer, wanted in REFILLED_TESTS.items():
            names = _instance_tests(listing, layer, instance)
            assert names, f"{layer}/{instance} (GPU) missing from the CUDA test binary"
            for name in wanted:
                assert name in names, (layer, instance, name)
    # GPU against CPU (TestDtypes: instance 0 float, 1 double).
    for layer, wanted in GPU_VS_CPU_TESTS.items():
        for instance in (0, 1):
            names = _instance_tests(listing, layer, instance)
            assert names, f"{layer}/{instance} missing from the CUDA test binary"
            for name in wanted:
                assert name in names, (layer, instance, name)


def test_cuda_build_cpu_cases_pass(cuda_tree: tuple[Path, dict[str, str]]) -> None:
    """The CUDA build's CPU path (CPU_ONLY off, no GPU needed) passes our tests too."""
    binary, env = cuda_tree
    proc = run(
        [
            str(binary),
            "--gtest_filter="
            + ":".join(f"{pattern}/{i}.*" for pattern in OUR_FILTER.split(":") for i in (0, 1))
            + ":-*GPUvsCPU*",
        ],
        cwd=binary.parents[2],
        env=env,
    )
    assert proc.returncode == 0
    assert _passed(proc.stdout) >= IRG_CPU + REFILLED_CPU


@pytest.mark.skipif(
    not _has_gpu(),
    reason="no CUDA GPU on this machine: the GPU gtests are built (CUDA tree) but cannot run",
)
def test_gpu_gtests(cuda_tree: tuple[Path, dict[str, str]]) -> None:
    binary, env = cuda_tree
    proc = run([str(binary), f"--gtest_filter={OUR_FILTER}"], cwd=binary.parents[2], env=env)
    assert proc.returncode == 0
    gpu_vs_cpu = 2 * sum(len(names) for names in GPU_VS_CPU_TESTS.values())
    assert _passed(proc.stdout) >= IRG_CPU + IRG_GPU + gpu_vs_cpu + REFILLED_CPU + REFILLED_GPU
