"""The Python code stays ruff-clean (configuration in pyproject.toml); the
REFILLED layers' C++ passes Caffe's own cpp_lint.py."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from conftest import REPO, run

# Checked with Caffe's scripts/cpp_lint.py, as Caffe's `make lint` does.
CPP_LINTED = [
    "caffe_layers/include/caffe/util/relation_math.hpp",
    "caffe_layers/include/caffe/layers/triplet_relation_loss_layer.hpp",
    "caffe_layers/include/caffe/layers/local_center_kd_loss_layer.hpp",
    "caffe_layers/src/caffe/layers/triplet_relation_loss_layer.cpp",
    "caffe_layers/src/caffe/layers/triplet_relation_loss_layer.cu",
    "caffe_layers/src/caffe/layers/local_center_kd_loss_layer.cpp",
    "caffe_layers/src/caffe/layers/local_center_kd_loss_layer.cu",
    "caffe_layers/src/caffe/test/test_triplet_relation_loss_layer.cpp",
    "caffe_layers/src/caffe/test/test_local_center_kd_loss_layer.cpp",
]


def test_ruff_clean() -> None:
    ruff = shutil.which("ruff") or str(REPO / ".venv" / "bin" / "ruff")
    if not shutil.which(ruff):
        pytest.skip("ruff not installed")
    proc = run([ruff, "check", "pyirg", "tools", "tests"], cwd=REPO)
    sys.stdout.write(proc.stdout)
    assert proc.returncode == 0, "ruff found problems (above)"


def test_cpp_lint_clean(caffe_root: Path) -> None:
    candidates = sorted((caffe_root.parents[1] / "src").glob("caffe-*/scripts/cpp_lint.py"))
    if not candidates:
        pytest.skip("no Caffe source (scripts/cpp_lint.py) in the build cache")
    proc = run([sys.executable, "-W", "ignore", str(candidates[0]), *CPP_LINTED], cwd=REPO)
    sys.stdout.write(proc.stderr)
    assert proc.returncode == 0, "cpp_lint.py found problems (above)"
