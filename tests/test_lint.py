"""The Python code stays ruff-clean (configuration in pyproject.toml); all our C++
(caffe_layers/, gpu_check/, tests/cpp/) passes Caffe's own cpp_lint.py."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from conftest import REPO, run

# Every C++ file of ours, checked with Caffe's scripts/cpp_lint.py as Caffe's `make lint` does.
CPP_LINTED = sorted(
    str(p.relative_to(REPO))
    for folder in ("caffe_layers", "gpu_check", "tests/cpp")
    for p in (REPO / folder).rglob("*")
    if p.suffix in (".hpp", ".cpp", ".cu", ".cuh")
)


def test_ruff_clean() -> None:
    ruff = shutil.which("ruff") or str(REPO / ".venv" / "bin" / "ruff")
    if not shutil.which(ruff):
        pytest.skip("ruff not installed")
    proc = run([ruff, "check", "pyirg", "tools", "tests", "gpu_check"], cwd=REPO)
    sys.stdout.write(proc.stdout)
    assert proc.returncode == 0, "ruff found problems (above)"


def test_cpp_lint_clean(caffe_root: Path) -> None:
    candidates = sorted((caffe_root.parents[1] / "src").glob("caffe-*/scripts/cpp_lint.py"))
    if not candidates:
        pytest.skip("no Caffe source (scripts/cpp_lint.py) in the build cache")
    assert len(CPP_LINTED) >= 16, CPP_LINTED  # the IRG and REFILLED layers, tests, headers
    proc = run([sys.executable, "-W", "ignore", str(candidates[0]), *CPP_LINTED], cwd=REPO)
    sys.stdout.write(proc.stderr)
    assert proc.returncode == 0, "cpp_lint.py found problems (above)"
