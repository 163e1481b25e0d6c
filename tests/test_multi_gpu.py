"""pyirg.train.multi_gpu without a GPU: the launcher's parsing, the ranks' data split,
the refusals (CPU_ONLY build, no NCCL, no such GPU, a truncated NCCL id), and the
CUDA tree's pycaffe having NCCL (built with USE_NCCL, the whole id kept)."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
from conftest import PYIRG_ENV, REPO, run_pyirg

from pyirg.train import TrainError
from pyirg.train import multi_gpu as mg


@pytest.mark.parametrize("text, gpus", [("0", (0,)), ("0,1", (0, 1)), (" 3, 1 ", (3, 1))])
def test_parse_gpus(text: str, gpus: tuple[int, ...]) -> None:
    assert mg.parse_gpus(text) == gpus


@pytest.mark.parametrize("text, message", [
    ("", "separated by commas"), ("0,a", "separated by commas"), ("-1", ">= 0"),
    ("0,0", "each GPU once"),
])  # fmt: skip
def test_parse_gpus_refuses(text: str, message: str) -> None:
    with pytest.raises(TrainError, match=message):
        mg.parse_gpus(text)


def test_ranks_read_distinct_batches_in_a_resumable_order() -> None:
    def batch(index: int) -> dict[str, int]:
        return {"index": index}

    ranks = [mg.shard_batch_fn(batch, r, 3) for r in range(3)]
    seen = [fn(it)["index"] for it in range(4) for fn in ranks]
    assert seen == list(range(12))  # every batch once, none twice, in order
    assert mg.shard_batch_fn(batch, 0, 1) is batch and mg.shard_batch_fn(None, 1, 2) is None


def _fake_caffe(has_nccl: bool, uid: bytes = b"x" * 128) -> types.SimpleNamespace:
    nccl = types.SimpleNamespace(new_uid=lambda: uid)
    return types.SimpleNamespace(
        __file__=str(REPO / "x" / "python" / "caffe" / "__init__.py"),
        has_nccl=lambda: has_nccl,
        NCCL=nccl,
    )


def test_refusals(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mg, "caffe_has_cuda", lambda: False)
    with pytest.raises(TrainError, match="CPU_ONLY build"):
        mg.check_multi_gpu(_fake_caffe(True), (0,), 1)
    monkeypatch.setattr(mg, "caffe_has_cuda", lambda: True)
    with pytest.raises(TrainError, match="built without NCCL; set USE_NCCL := 1"):
        mg.check_multi_gpu(_fake_caffe(False), (0,), 1)
    with pytest.raises(TrainError, match="no NVIDIA GPU here"):
        mg.check_multi_gpu(_fake_caffe(True), (0,), None)
    with pytest.raises(TrainError, match=r"GPU 2 not found: this machine has 2 \(ids 0..1\)"):
        mg.check_multi_gpu(_fake_caffe(True), (0, 2), 2)
    mg.check_multi_gpu(_fake_caffe(True), (0, 1), 2)  # fine
    with pytest.raises(TrainError, match="returned 17 of 128 bytes.*PyBytes_FromStringAndSize"):
        mg.new_uid(_fake_caffe(True, b"y" * 17))
    assert mg.new_uid(_fake_caffe(True)) == b"x" * 128


def test_train_gpus_on_this_machine_refuses_cleanly(tmp_path: Path) -> None:
    pytest.importorskip("caffe")
    solver = tmp_path / "solver.prototxt"
    solver.write_text('net: "n.prototxt"\nbase_lr: 0.1\nmax_iter: 1\n')
    (tmp_path / "n.prototxt").write_text(
        'layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }\n'
    )
    args = ("train", "--solver", str(solver), "--out", str(tmp_path / "out"))
    proc = run_pyirg(*args, "--gpus", "0,1")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "--gpus" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_pyirg(*args, "--gpus", "0", "--gpu", "1")
    assert proc.returncode == 2 and "exclude each other" in proc.stderr


def test_cuda_tree_pycaffe_has_whole_nccl_ids() -> None:
    tree = Path(os.environ.get("IRG_CAFFE_CUDA") or REPO / ".caffe-cuda").resolve()
    if not (tree / "python" / "caffe" / "_caffe.so").exists():
        pytest.skip("no CUDA tree with pycaffe (tools/build_caffe.sh --cuda, which needs nvcc)")
    libs = (tree / ".irg-ld-library-path").read_text().strip()
    path = os.pathsep.join([libs, str(tree / ".build_release" / "lib")])
    env = dict(PYIRG_ENV, PYTHONPATH=str(tree / "python"), LD_LIBRARY_PATH=path)
    code = "import caffe; print(caffe.has_nccl()); print(len(caffe.NCCL.new_uid()))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.split()
    assert lines[0] == "True"
    if len(lines) > 1:
        assert lines[1] == "128"
