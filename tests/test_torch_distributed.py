"""IRGLoss under torch.distributed: 2 processes on the CPU (gloo), launched with torchrun.

``graph="global"``: the mean of the ranks' losses and the DDP-averaged gradients equal
one process on the concatenated batch (float64, 1e-10 relative), for every method and
normalize mode; ``graph="local"``: the mean of the per-shard losses. Ranks of different
batch sizes are refused under ``global``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PYIRG_ENV, REPO

pytest.importorskip("torch")


def _torchrun(script: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(script), *args]  # fmt: skip
    return subprocess.run(
        cmd, capture_output=True, text=True, cwd=REPO, env=PYIRG_ENV, timeout=timeout
    )


@pytest.mark.parametrize("graph", ["global", "local"])
def test_two_ranks_match_one_process(graph: str, tmp_path: Path) -> None:
    out = tmp_path / "errors.json"
    proc = _torchrun(REPO / "tests" / "dist" / "irg_loss_ranks.py", graph, str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    errors = json.loads(out.read_text())
    assert len(errors) == (18 if graph == "global" else 9)  # 3 methods x 3 normalize
    worst = max(errors.items(), key=lambda kv: kv[1])
    assert worst[1] < 1e-10, f"{worst[0]}: relative error {worst[1]:.3g}"


def test_global_graph_refuses_unequal_batches(tmp_path: Path) -> None:
    script = tmp_path / "unequal.py"
    script.write_text(
        "import torch, torch.distributed as dist\n"
        "from pyirg.torch.distributed import gather_batch\n"
        "dist.init_process_group('gloo')\n"
        "x = torch.zeros(3 + dist.get_rank(), 2)\n"
        "try:\n"
        "    gather_batch(x, \"student 'Pooling1'\")\n"
        "except ValueError as e:\n"
        "    print('refused:', e)\n"
        "dist.destroy_process_group()\n"
    )
    proc = _torchrun(script)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 0: 3, rank 1: 4" in proc.stdout and "drop_last=True" in proc.stdout
