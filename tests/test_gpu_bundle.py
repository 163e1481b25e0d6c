"""The portable GPU check (tools/gpu_bundle.sh), built and checked where there is no GPU.

What can be proven without a GPU: the bundle builds from the CUDA tree, stays under
its 48 MiB, needs nothing from this machine but libc/libstdc++/libgcc_s and CUDA's
own libraries (``ldd``, the RPATHs), its CPU test cases pass from a copy in a fresh
folder with the build tree moved away, and its run script says "no GPU" (exit 77)
or names the CUDA libraries it cannot find (exit 3) instead of crashing. The
report and the PyTorch timing script are checked on their own.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, run

LIMIT = 48 * 1024 * 1024
SYSTEM = re.compile(
    r"^(linux-vdso|ld-linux|libc|libm|libdl|libpthread|librt|libstdc\+\+|libgcc_s)\."
)
CUDA = re.compile(r"^(libcudart|libcublas|libcublasLt|libcurand)\.so")
CPU_CASES = "*LayerTest/0.*:*LayerTest/1.*:*DeathTest/*"

pytestmark = pytest.mark.skipif(not shutil.which("nvcc"), reason="no nvcc: the bundle needs it")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "gpu_bundle"
    proc = run(["bash", str(REPO / "tools" / "gpu_bundle.sh"), str(out)], timeout=3600)
    assert proc.returncode == 0, "tools/gpu_bundle.sh failed (output above)"
    return out


@pytest.fixture(scope="module")
def cuda_libs() -> str:
    """The CUDA runtime, cuBLAS and cuRAND folders of this machine (what run.sh would find)."""
    tree = (REPO / ".caffe-cuda").resolve()
    deps = (tree / ".irg-ld-library-path").read_text().strip()
    nvcc = Path(shutil.which("nvcc")).resolve()
    cudart = sorted(nvcc.parents[1].glob("**/libcudart.so.13"))
    assert cudart, f"no libcudart.so.13 under {nvcc.parents[1]}"
    return os.pathsep.join([deps, str(cudart[0].parent)])


def _elves(bundle: Path) -> list[Path]:
    return sorted(p for p in (*bundle.glob("bin/*"), *bundle.glob("lib/*")) if p.is_file())


@pytest.mark.slow
def test_bundle_is_small_and_complete(bundle: Path) -> None:
    size = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file())
    assert size <= LIMIT, f"{size / 2**20:.1f} MiB"
    for name in ("run.sh", "report.py", "torch_bench.py", "BUILD_INFO.txt",
                 "bin/irg_gtests", "bin/irg_gpu_bench", "lib/libirgcheck.so",
                 "python/torch_forms.py", "python/blas.py"):  # fmt: skip
        assert (bundle / name).is_file(), name
    info = (bundle / "BUILD_INFO.txt").read_text()
    for sm in ("sm_75", "sm_80", "sm_86", "sm_89", "sm_90", "compute_90"):
        assert sm in info, f"{sm} missing from the archs: {info}"


@pytest.mark.slow
def test_bundle_needs_only_the_system_and_cuda(bundle: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    # From the programs: their DT_RPATH reaches every library they load, indirect ones
    # too (ldd of a bundled library alone would look only in the system's folders).
    for elf in sorted(bundle.glob("bin/*")):
        listing = run(["ldd", str(elf)], env=env).stdout
        for line in listing.splitlines():
            parts = line.split()
            if not parts or "=>" not in parts:
                continue
            name, target = parts[0], parts[2]
            if CUDA.match(name):  # found at run time: the system's CUDA or the wheels
                continue
            assert target != "not", f"{elf.name} needs {name}, which is not in the bundle"
            if not SYSTEM.match(name):
                assert Path(target).resolve().is_relative_to(bundle.resolve()), (
                    f"{elf.name} loads {name} from {target}, outside the bundle"
                )
    for elf in _elves(bundle):
        dynamic = run(["readelf", "-d", str(elf)]).stdout
        assert "RUNPATH" not in dynamic, f"{elf.name}: RUNPATH would not reach indirect deps"
        rpaths = re.findall(r"\(RPATH\)\s+Library rpath: \[(.*)\]", dynamic)
        for rpath in rpaths:
            assert all(p.startswith("$ORIGIN") for p in rpath.split(":")), (elf.name, rpath)
        if elf.parent.name == "bin":
            assert rpaths == ["$ORIGIN/../lib"], (elf.name, rpaths)


@pytest.mark.slow
def test_bundle_cpu_cases_pass_without_the_build_tree(
    bundle: Path, cuda_libs: str, tmp_path: Path
) -> None:
    copy = tmp_path / "elsewhere"
    shutil.copytree(bundle, copy, symlinks=True)
    tree = (REPO / ".caffe-cuda").resolve()
    moved = tree.with_name(tree.name + ".moved-away")
    tree.rename(moved)
    try:
        proc = run(
            [str(copy / "bin" / "irg_gtests"), f"--gtest_filter={CPU_CASES}"],
            cwd=tmp_path,
            env=dict(os.environ, LD_LIBRARY_PATH=cuda_libs, GLOG_minloglevel="2"),
            timeout=900,
        )
    finally:
        moved.rename(tree)
    assert proc.returncode == 0, "the bundle's CPU cases failed (output above)"
    passed = re.search(r"\[  PASSED  \] (\d+) tests?\.", proc.stdout)
    assert passed and int(passed.group(1)) >= 150, proc.stdout[-2000:]


@pytest.mark.slow
def test_run_script_says_no_gpu(bundle: Path, cuda_libs: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    proc = subprocess.run(
        ["bash", str(bundle / "run.sh"), str(tmp_path / "results")],
        capture_output=True, text=True, env=dict(env, IRG_CUDA_LIBS=cuda_libs), timeout=300,
    )  # fmt: skip
    assert proc.returncode == 77, proc.stdout + proc.stderr
    assert "no GPU" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


@pytest.mark.slow
def test_run_script_names_missing_cuda_libraries(bundle: Path, tmp_path: Path) -> None:
    # An empty python3 path and no CUDA folders: cuBLAS and cuRAND are not on this
    # machine's system paths (build_caffe.sh keeps them in its cache).
    env = {k: v for k, v in os.environ.items() if k not in ("LD_LIBRARY_PATH", "IRG_CUDA_LIBS")}
    proc = subprocess.run(
        ["bash", str(bundle / "run.sh"), str(tmp_path / "results")],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    if proc.returncode == 77:
        pytest.skip("this machine's system paths hold all CUDA 13 libraries")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "missing CUDA 13 libraries:" in proc.stdout and "libcublas.so.13" in proc.stdout


def test_report_merges_the_measurements(tmp_path: Path) -> None:
    (tmp_path / "caffe_bench.tsv").write_text(
        "layer\tn\tc\tms\tfwd_ms\tref\tref_ms\tfwd_kernels\tbwd_kernels\td2h\th2d\n"
        "BatchEuclideanMap\t1024\t2048\t0.5\t0.2\tcuBLAS GEMMs\t0.25\t4\t5\t0\t0\n"
        "BatchEuclideanVector\t64\t64\t0.02\t0.01\tdevice copy of x, y\t0.01\t-1\t-1\t-1\t-1\n"
    )
    (tmp_path / "torch_bench.tsv").write_text(
        "layer\tn\tc\tms\nBatchEuclideanMap\t1024\t2048\t1.0\n"
    )
    (tmp_path / "gtests.log").write_text("[  PASSED  ] 321 tests.\n")
    proc = run([sys.executable, str(REPO / "gpu_check" / "report.py"), str(tmp_path)])
    assert proc.returncode == 0
    lines = proc.stdout.strip().splitlines()
    assert lines[-2] == (
        "| BatchEuclideanMap | 1024 | 2048 | 0.5000 | cuBLAS GEMMs | 0.2500 | 2.00 | 1.0000 "
        "| 0.50 | 4/5 | 0 |"
    )
    assert lines[-1].endswith("| 2.00 | - | - | -/- | - |")
    assert "gtests: 321 passed, 0 failed" in proc.stdout
    assert (tmp_path / "summary.md").read_text().count("| Batch") == 2


def test_torch_bench_without_cuda_says_so(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    script = REPO / "gpu_check" / "torch_bench.py"
    proc = run([sys.executable, str(script), "--out", str(tmp_path / "t.tsv")])
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    assert proc.returncode == 77
    assert "sees no CUDA device" in proc.stdout
    assert not (tmp_path / "t.tsv").exists()


def test_torch_bench_times_every_size(tmp_path: Path) -> None:
    """The timing loop itself, on the CPU (``--device cpu``) with the bundled torch forms."""
    pytest.importorskip("torch")
    copy = tmp_path / "bundle"
    (copy / "python").mkdir(parents=True)
    shutil.copy(REPO / "gpu_check" / "torch_bench.py", copy)
    shutil.copy(REPO / "pyirg" / "bench" / "torch_forms.py", copy / "python")
    out = tmp_path / "t.tsv"
    args = ["--device", "cpu", "--ns", "4,16", "--cs", "3,8", "--out", str(out)]
    proc = run([sys.executable, str(copy / "torch_bench.py"), *args])
    assert proc.returncode == 0
    rows = out.read_text().splitlines()
    assert rows[0] == "layer\tn\tc\tms" and len(rows) == 1 + 2 * 4
    assert all(float(r.split("\t")[3]) > 0 for r in rows[1:])
