"""Regression tests for the cases a bad-input probe of every pyirg command found: each was a
traceback, a silently ignored option or a silently wrong result before its fix."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

pytest.importorskip("caffe")


ENV = dict(os.environ, GLOG_minloglevel="2", MPLBACKEND="Agg")


def pyirg(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pyirg", *argv],
        capture_output=True, text=True, cwd=REPO, env=ENV, timeout=timeout,
    )  # fmt: skip


def test_bench_refuses_contradicting_options() -> None:
    for argv in (
        ["--skip-train", "--train-only"],
        ["--blas-only", "--train-only"],
        ["--blas-only", "--transform-pool", "Reduction"],
    ):
        proc = pyirg("bench", "--quick", *argv)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, argv


def test_verify_checks_its_json_path_first(tmp_path: Path) -> None:
    proc = pyirg("verify", "--no-nets", "--json", str(tmp_path))
    assert proc.returncode == 2 and "--json" in proc.stderr and "Traceback" not in proc.stderr


def test_verify_refuses_a_negative_seed_in_one_line() -> None:
    proc = pyirg("verify", "--no-nets", "--seed", "-1")
    assert proc.returncode == 2 and "--seed" in proc.stderr and "Traceback" not in proc.stderr
