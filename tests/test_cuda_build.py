"""The CUDA kernels and the GPU cases of the gtests compile (nvcc, CPU_ONLY off).

Nothing here can run CUDA; compiling catches a broken kernel all the same.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPO, run


@pytest.mark.slow
def test_cuda_sources_compile(caffe_base: Path) -> None:
    proc = run(["bash", str(REPO / "tools" / "check_cuda.sh"), str(caffe_base)])
    if proc.returncode == 77:
        pytest.skip(proc.stdout.strip())
    assert proc.returncode == 0, "nvcc/g++ failed on the CUDA-enabled build (output above)"
    assert "all CUDA-enabled objects compiled" in proc.stdout
