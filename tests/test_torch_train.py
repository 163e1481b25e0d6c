"""``pyirg torch-train``: distillation in PyTorch, 2 processes under torchrun (gloo, CPU).

A short run on the embedded digits checkpoints and resumes bit-exactly (a run stopped
at iteration 3 and resumed gives the same student and metrics as one straight run);
the student it writes as a .caffemodel gives, through Caffe's forward of its deploy
prototxt, PyTorch's output; bad settings and run folders are refused with one line.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import PYIRG_ENV, REPO, run_pyirg

torch = pytest.importorskip("torch")

RUN = ["--iters", "6", "--batch", "8", "--test-interval", "3", "--snapshot", "3",
       "--no-progress", "--graph", "global"]  # fmt: skip


def _torchrun(*argv: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "pyirg", "torch-train", *argv]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=PYIRG_ENV,
                          timeout=600)  # fmt: skip


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ResNet-20 teacher for 8x8 grey digits, written as Caffe writes one."""
    from pyirg.arch import cifar_resnet
    from pyirg.torch.caffemodel import save_caffemodel
    from pyirg.torch.resnet import CifarResNet

    torch.manual_seed(5)
    path = tmp_path_factory.mktemp("teacher") / "teacher.caffemodel"
    save_caffemodel(CifarResNet(cifar_resnet(20, 1.0, 10, 1)), path)
    return path


@pytest.fixture(scope="module")
def runs(teacher: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("runs")
    full, part = root / "full", root / "part"
    for argv in (
        ("--out", str(full)),
        ("--out", str(part), "--stop-at", "3"),
        ("--out", str(part), "--resume"),
    ):
        proc = _torchrun("--teacher-weights", str(teacher), *RUN, *argv)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return full, part


@pytest.mark.slow
def test_two_ranks_checkpoint_and_resume_exactly(runs: tuple[Path, Path]) -> None:
    full, part = runs
    assert sorted(p.name for p in full.glob("checkpoint_*.pt")) == [
        "checkpoint_3.pt", "checkpoint_6.pt"
    ]  # fmt: skip
    assert (full / "student.caffemodel").read_bytes() == (part / "student.caffemodel").read_bytes()
    rows = json.loads((full / "metrics.json").read_text())
    resumed = json.loads((part / "metrics.json").read_text())
    timing = ("iter_ms", "gather_ms")  # wall times: the only values that may differ
    assert [{k: v for k, v in r.items() if k not in timing} for r in rows] == [
        {k: v for k, v in r.items() if k not in timing} for r in resumed
    ]
    assert [r["iter"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert {"gt", "logits", "edges", "total", "lr"} <= set(rows[0])
    assert "test_accuracy" in rows[2] and "test_accuracy" in rows[5]
    record = json.loads((full / "run.json").read_text())
    assert record["ranks"] == 2 and record["settings"]["graph"] == "global"


@pytest.mark.slow
def test_student_caffemodel_runs_in_caffe_as_in_pytorch(runs: tuple[Path, Path]) -> None:
    caffe = pytest.importorskip("caffe")
    from pyirg.arch import cifar_resnet
    from pyirg.data.digits import load_digits_split
    from pyirg.data.feed import FedSplit
    from pyirg.torch.resnet import CifarResNet

    full, _ = runs
    fed = FedSplit.of(load_digits_split(), 1, 1.0 / 255)
    x = fed.test_array()[:16]
    student = CifarResNet(cifar_resnet(20, 0.5, 10, 1)).double().eval()
    state = torch.load(full / "checkpoint_6.pt", weights_only=True)["student"]
    student.load_state_dict(state)
    with torch.no_grad():
        want = torch.softmax(student(torch.from_numpy(x).double()), dim=1).numpy()
    net = caffe.Net(str(full / "student_deploy.prototxt"), str(full / "student.caffemodel"),
                    caffe.TEST)  # fmt: skip
    blob = net.inputs[0]
    net.blobs[blob].reshape(*x.shape)
    got = net.forward(**{blob: x})[net.outputs[0]].reshape(len(x), -1)
    assert np.abs(got - want).max() < 1e-4


@pytest.mark.parametrize(
    "argv, message",
    [
        (("--method", "IRG"), "needs --teacher-weights"),
        (("--teacher-weights", "/nonexistent.caffemodel"), "no such file"),
        (("--method", "baseline", "--iters", "0"), "--iters must be >= 1"),
        (("--method", "baseline", "--stop-at", "9", "--iters", "4"), "--stop-at must lie in"),
        (("--method", "baseline", "--dataset", "cifar10"), "needs --data-dir"),
        (("--method", "baseline", "--resume"), "holds no run"),
        (("--method", "baseline", "--teacher-weights", __file__), "not used by --method baseline"),
        (("--method", "baseline", "--base-lr", "-1"), "--base-lr must be a positive finite"),
        (("--method", "baseline", "--weight-decay", "nan"), "--weight-decay must be a finite"),
        (("--method", "baseline", "--momentum", "1"), "--momentum must lie in [0, 1)"),
        (("--method", "baseline", "--snapshot", "-1"), "--snapshot must be >= 0"),
        (("--method", "baseline", "--data-dir", "/nonexistent"), "/nonexistent"),
    ],
)
def test_bad_settings_are_refused(argv: tuple[str, ...], message: str, tmp_path: Path) -> None:
    proc = run_pyirg("torch-train", "--out", str(tmp_path / "r"), *argv)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "r").exists()  # a refused start leaves no run folder behind


def test_one_process_run_and_folder_rules(tmp_path: Path) -> None:
    out = tmp_path / "r"
    base = ("torch-train", "--out", str(out), "--method", "baseline", "--iters", "2",
            "--batch", "4", "--no-progress")  # fmt: skip
    first = run_pyirg(*base)
    assert first.returncode == 0
    # Two iterations learn next to nothing (about 0.12 over 797 images, 10 classes, the bar
    # is about 0.13): the run says so exactly when its accuracy is at the bar or below.
    from pyirg.data.digits import load_digits_split
    from pyirg.train import chance_bar

    final = json.loads((out / "metrics.json").read_text())[-1]["test_accuracy"]
    at_chance = final <= chance_bar(load_digits_split().test_labels, 10)
    assert ("is chance level for 10 classes" in first.stderr) == at_chance, first.stderr
    assert (out / "student.caffemodel").is_file() and (out / "student_deploy.prototxt").is_file()
    # A resume of the finished run trains nothing and reports the run's accuracy, not NaN.
    accuracy = json.loads((out / "metrics.json").read_text())[-1]["test_accuracy"]
    finished = run_pyirg(*base, "--resume")
    assert finished.returncode == 0 and f"test accuracy {accuracy:.4f};" in finished.stdout
    again = run_pyirg(*base)
    assert again.returncode == 2 and "already holds a run" in again.stderr
    other = run_pyirg(*base, "--resume", "--batch", "8")
    assert other.returncode == 2 and "batch 4 -> 8" in other.stderr


@pytest.mark.slow
def test_student_exports_to_onnx(runs: tuple[Path, Path], tmp_path: Path) -> None:
    pytest.importorskip("caffe")
    pytest.importorskip("onnxruntime")
    full, _ = runs
    onnx = tmp_path / "student.onnx"
    proc = run_pyirg("export-onnx", str(full / "student_deploy.prototxt"),
                     str(full / "student.caffemodel"), str(onnx), timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert onnx.is_file()


@pytest.mark.slow
def test_ddp_benchmark_reports_the_gathers(tmp_path: Path) -> None:
    proc = run_pyirg("bench-ddp", "--batch", "8", "--iters", "4", "--out", str(tmp_path),
                     timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads((tmp_path / "bench_ddp.json").read_text())["results"]
    assert [(r["processes"], r["graph"]) for r in results] == [
        (1, "local"), (2, "local"), (2, "global")
    ]  # fmt: skip
    assert [r["edges_per_layer_per_rank"] for r in results] == [64, 64, 256]
    assert results[0]["gather_ms"] == 0 and results[2]["gather_ms"] > 0
    assert "(K x B)^2 edges" in proc.stdout


def test_sigterm_saves_a_checkpoint_and_the_run_resumes(tmp_path: Path) -> None:
    """SIGTERM (what a scheduler or torchrun sends) stops after the iteration in progress
    with a checkpoint there, one line naming it, and status 143; --resume continues."""
    import re
    import signal
    import time

    out = tmp_path / "r"
    base = ["--out", str(out), "--method", "baseline", "--batch", "4", "--snapshot", "0",
            "--test-interval", "0", "--no-progress"]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyirg", "torch-train", *base, "--iters", "100000"],
        cwd=REPO, env=PYIRG_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not (out / "run.json").is_file() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)  # some iterations into the loop
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    stopped = re.search(r"SIGTERM at iteration (\d+): saved checkpoint_(\d+)\.pt", err)
    assert stopped and stopped.group(1) == stopped.group(2), err
    n = int(stopped.group(1))
    assert (out / f"checkpoint_{n}.pt").is_file() and not (out / "student.caffemodel").exists()
    assert [r["iter"] for r in json.loads((out / "metrics.json").read_text())] == list(
        range(1, n + 1)
    )
    resumed = run_pyirg("torch-train", *base, "--iters", "100000", "--stop-at", str(n + 2),
                        "--resume")  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from checkpoint_{n}.pt (iteration {n})" in resumed.stdout
    rows = json.loads((out / "metrics.json").read_text())
    assert [r["iter"] for r in rows] == list(range(1, n + 3))
