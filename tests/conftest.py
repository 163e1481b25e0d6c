"""Shared fixtures: where the Caffe builds, the checkout and ../shared are.

The test command (tools/test.sh) builds Caffe first and sources tools/env.sh,
so CAFFE_ROOT points at the drop-in tree; .caffe-base (the stock tree with
only the caffe.proto patch) is what the plugin build links against.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
AUTHORS_PROTOTXT = SHARED / "reference" / "authors_prototxt"


def _tree(env_name: str, link: str) -> Path | None:
    raw = os.environ.get(env_name) or (REPO / link)
    path = Path(raw).resolve()
    return path if (path / ".build_release" / "lib" / "libcaffe.so").exists() else None


@pytest.fixture(scope="session")
def caffe_root() -> Path:
    root = _tree("CAFFE_ROOT", ".caffe")
    if root is None:
        pytest.skip("no Caffe build: run bash tools/build_caffe.sh (tools/test.sh does)")
    return root


@pytest.fixture(scope="session")
def caffe_base() -> Path:
    root = _tree("IRG_CAFFE_BASE", ".caffe-base")
    if root is None:
        pytest.skip("no base Caffe tree (.caffe-base): built by tools/build_caffe.sh")
    return root


@pytest.fixture(scope="session")
def authors_prototxt() -> Path:
    if not AUTHORS_PROTOTXT.is_dir():
        pytest.skip(f"{AUTHORS_PROTOTXT} absent (../shared is not beside this checkout)")
    return AUTHORS_PROTOTXT


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Run a command, capturing text output, and echo it when it fails."""
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if proc.returncode:
        sys.stdout.write(proc.stdout[-20000:])
        sys.stderr.write(proc.stderr[-20000:])
    return proc


PYIRG_ENV = dict(os.environ, GLOG_minloglevel="2", MPLBACKEND="Agg")


def run_pyirg(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m pyirg ARGV`` from the checkout, as a user runs it (output captured)."""
    return subprocess.run(
        [sys.executable, "-m", "pyirg", *argv],
        capture_output=True, text=True, cwd=REPO, env=PYIRG_ENV, timeout=timeout,
    )  # fmt: skip
