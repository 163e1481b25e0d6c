"""The Python code stays ruff-clean (configuration in pyproject.toml)."""

from __future__ import annotations

import shutil
import sys

import pytest
from conftest import REPO, run


def test_ruff_clean() -> None:
    ruff = shutil.which("ruff") or str(REPO / ".venv" / "bin" / "ruff")
    if not shutil.which(ruff):
        pytest.skip("ruff not installed")
    proc = run([ruff, "check", "pyirg", "tools", "tests"], cwd=REPO)
    sys.stdout.write(proc.stdout)
    assert proc.returncode == 0, "ruff found problems (above)"
