"""The main job in a reduced form: every method trains through Caffe end to end."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from conftest import REPO, run

pytest.importorskip("caffe")


def test_main_job_quick(tmp_path: Path) -> None:
    out = tmp_path / "digits"
    env = dict(os.environ, GLOG_minloglevel="2", MPLBACKEND="Agg")
    proc = run(
        [sys.executable, "-m", "pyirg", "main", "--quick", "--no-progress", "--out", str(out)],
        cwd=REPO,
        env=env,
    )
    assert proc.returncode == 0
    results = json.loads((out / "results.json").read_text())
    methods = {r["method"] for r in results["runs"]}
    assert methods == {"baseline", "IRG", "IRG-t", "MTK"}
    assert len(results["runs"]) == 8  # two seeds in --quick
    for r in results["runs"]:
        assert 0.0 <= r["accuracy"] <= 1.0
        assert Path(r["weights"]).is_file()
    assert (out / "results.png").stat().st_size > 0
    for name in ("teacher", "student"):
        assert "Softmax" in (out / f"deploy_{name}.prototxt").read_text()
    table = (out / "results.md").read_text()
    for method in methods:
        assert f"| {method} |" in table
    assert "| method | test accuracy % (mean ± std)" in proc.stdout
    # distillation nets really contain the IRG layers they are named for
    irg = (out / "IRG" / "seed0" / "solver.effective.prototxt").read_text()
    assert "BatchEuclideanMap" in irg and "BatchEuclideanVector" not in irg
    irg_t = (out / "IRG-t" / "seed0" / "solver.effective.prototxt").read_text()
    assert "BatchEuclideanVector" in irg_t and "BatchEuclideanMap" not in irg_t
    mtk = (out / "MTK" / "seed0" / "solver.effective.prototxt").read_text()
    assert "BatchEuclideanVector" in mtk and "BatchEuclideanMap" in mtk


def test_pyirg_command_lists_subcommands() -> None:
    proc = run([sys.executable, "-m", "pyirg", "--help"], cwd=REPO)
    assert proc.returncode == 0
    for name in ("gen", "check", "prepare-data", "train", "main", "verify", "export-onnx"):
        assert f"  {name}" in proc.stdout
    bad = run([sys.executable, "-m", "pyirg", "nope"], cwd=REPO)
    assert bad.returncode == 2 and "unknown command" in bad.stderr


@pytest.mark.parametrize(
    "script",
    [
        "gen_prototxt.py",
        "check_net.py",
        "prepare_data.py",
        "train.py",
        "verify.py",
        "export_onnx.py",
        "run_main.py",
    ],
)
def test_tools_are_thin_wrappers_with_help(script: str) -> None:
    proc = run([sys.executable, str(REPO / "tools" / script), "--help"], cwd=REPO)
    assert proc.returncode == 0
    assert "usage:" in proc.stdout
