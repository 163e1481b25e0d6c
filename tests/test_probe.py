"""Regression tests for the cases a bad-input probe of every pyirg command found: each was a
traceback, a silently ignored option or a silently wrong result before its fix."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO

pytest.importorskip("caffe")
from caffe.proto import caffe_pb2

from pyirg import cli
from pyirg.caffeio import read_net as load_net
from pyirg.check import check_net
from pyirg.experiment import ExperimentConfig
from pyirg.experiment import main as main_job

ENV = dict(os.environ, GLOG_minloglevel="2", MPLBACKEND="Agg")


def pyirg(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pyirg", *argv],
        capture_output=True, text=True, cwd=REPO, env=ENV, timeout=timeout,
    )  # fmt: skip


def test_negative_seeds_are_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="seeds must be >= 0"):
        ExperimentConfig(seeds=(-1,))
    with pytest.raises(ValueError, match="seeds must be >= 0"):
        ExperimentConfig(teacher_seed=-1)
    proc = pyirg("verify", "--no-nets", "--seed", "-1")
    assert proc.returncode == 2 and "--seed" in proc.stderr and "Traceback" not in proc.stderr


def test_non_finite_widths_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="teacher_width must be a positive finite"):
        ExperimentConfig(teacher_width=float("nan"))


def test_quick_keeps_the_options_given_explicitly(capsys) -> None:
    with pytest.raises(SystemExit) as info:  # --max-iter 0 was silently replaced by 24
        main_job(["--quick", "--max-iter", "0", "--out", "/nonexistent/never"])
    assert info.value.code == 2 and "max_iter" in capsys.readouterr().err


def test_main_refuses_weights_its_methods_do_not_use(capsys) -> None:
    for argv in (
        ["--methods", "baseline", "--edge-weight", "0.7"],
        ["--methods", "IRG", "--transform-weight", "0.3"],
    ):
        with pytest.raises(SystemExit) as info:
            main_job(["--quick", "--out", "/nonexistent/never", *argv])
        assert info.value.code == 2 and "not used by --methods" in capsys.readouterr().err


def test_fifo_inputs_are_refused_not_waited_on(tmp_path: Path) -> None:
    fifo = tmp_path / "net.prototxt"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not a regular file"):
        load_net(fifo)
    proc = pyirg("check", str(fifo), timeout=60)
    assert proc.returncode != 0 and "not a regular file" in proc.stdout + proc.stderr
    proc = pyirg("train", "--solver", str(fifo), "--out", str(tmp_path / "o"), timeout=60)
    assert proc.returncode == 2 and "not a regular file" in proc.stderr


def test_empty_net_and_unknown_layer_type_are_errors() -> None:
    assert [p.kind for p in check_net(caffe_pb2.NetParameter())] == ["empty-net"]
    net = caffe_pb2.NetParameter()
    net.layer.add(name="x", type="Input", top=["x"]).input_param.shape.add(dim=[4, 3])
    net.layer.add(name="bem", type="BatchEuclidMap", bottom=["x"], top=["bem"])
    found = [p for p in check_net(net) if p.kind == "unknown-type"]
    assert len(found) == 1 and "'BatchEuclideanMap'" in found[0].message  # the close match


def test_a_binary_caffemodel_given_as_a_net_names_the_file(tmp_path: Path) -> None:
    model = tmp_path / "teacher.caffemodel"
    model.write_bytes(b"\x0a\x04name\xa2\x06\xff\xfe\xfd")
    solver = tmp_path / "solver.prototxt"
    solver.write_text(f'net: "{model}"\nbase_lr: 0.1\nmax_iter: 2\n')
    proc = pyirg("train", "--solver", str(solver), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "teacher.caffemodel" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bench_refuses_contradicting_options() -> None:
    for argv in (
        ["--skip-train", "--train-only"],
        ["--blas-only", "--train-only"],
        ["--blas-only", "--transform-pool", "Reduction"],
    ):
        proc = pyirg("bench", "--quick", *argv)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, argv


def test_ctrl_c_is_one_line_with_status_130(monkeypatch, capsys) -> None:
    def interrupted(argv: list[str]) -> int:
        raise KeyboardInterrupt

    fake = types.SimpleNamespace(main=interrupted)
    monkeypatch.setattr(cli.importlib, "import_module", lambda name: fake)
    monkeypatch.delenv("PYIRG_DEBUG", raising=False)
    assert cli.main(["main", "--quick"]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and len(err.strip().splitlines()) == 1


def test_generated_input_solvers_test_and_labels_past_the_classes_are_refused(
    tmp_path: Path,
) -> None:
    """Generated Input-fed solvers had no test_iter (no test net, --test-interval ignored);
    a 5-class net fed the 10 digit classes corrupted memory (glibc: double free)."""
    nets = tmp_path / "nets"
    proc = pyirg(
        "gen", "--method", "baseline", "--dataset", "digits", "--data", "input",
        "--student-depth", "8", "--num-classes", "5", "--name", "b5", "--out", str(nets),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    solver = caffe_pb2.SolverParameter()
    from google.protobuf import text_format

    text_format.Merge((nets / "solver_b5.prototxt").read_text(), solver)
    assert list(solver.test_iter) and solver.test_iter[0] >= 1
    data = tmp_path / "digits"
    assert pyirg("prepare-data", "digits", str(data), "--quiet").returncode == 0
    proc = pyirg(
        "train", "--solver", str(nets / "solver_b5.prototxt"), "--npy-data", str(data),
        "--out", str(tmp_path / "run"), "--max-iter", "4", "--no-progress",
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "5 classes" in proc.stderr and "labels" in proc.stderr


def test_nan_teacher_weights_are_refused(tmp_path: Path) -> None:
    from pyirg.train import TeacherWeightsError
    from pyirg.train.weights import require_finite

    net = types.SimpleNamespace(
        params={"ip1": [types.SimpleNamespace(data=np.array([1.0, np.nan]))]}
    )
    with pytest.raises(TeacherWeightsError, match="non-finite.*ip1"):
        require_finite(net, ["ip1"], tmp_path / "nan.caffemodel")
    require_finite(net, [], tmp_path / "nan.caffemodel")


# -- the second probe's findings ------------------------------------------------------------


def test_teacher_weights_fifo_is_refused_not_waited_on(tmp_path: Path) -> None:
    from pyirg.train import TrainError
    from pyirg.train.folder import run_settings

    fifo = tmp_path / "teacher.caffemodel"
    os.mkfifo(fifo)
    with pytest.raises(TrainError, match="not a regular file"):
        run_settings(
            caffe_pb2.SolverParameter(), caffe_pb2.NetParameter(), seed=0,
            teacher_weights=str(fifo), init_weights=None, student_prefix="stu_",
        )  # fmt: skip


def test_a_mean_file_of_another_size_than_the_lmdb_images(tmp_path: Path) -> None:
    from pyirg import prepare

    data = tmp_path / "digits"
    assert prepare.main(["digits", str(data), "--quiet"]) == 0

    def net(source: str, mean: str) -> caffe_pb2.NetParameter:
        n = caffe_pb2.NetParameter()
        layer = n.layer.add(name="Data1", type="Data", top=["Data1", "Data2"])
        layer.data_param.source = str(data / source)
        layer.data_param.batch_size = 4
        layer.data_param.backend = caffe_pb2.DataParameter.LMDB
        layer.transform_param.mean_file = str(data / mean)
        return n

    found = [p for p in check_net(net("train_lmdb", "mean_pad.binaryproto"))]
    assert [p.kind for p in found] == ["mean-mismatch"]
    assert "1x10x10" in found[0].message and "1x8x8" in found[0].message
    assert check_net(net("train_pad_lmdb", "mean_pad.binaryproto")) == []
    assert check_net(net("test_lmdb", "mean.binaryproto")) == []


def test_input_feeding_options_without_npy_data_are_refused(tmp_path: Path) -> None:
    solver = tmp_path / "solver.prototxt"
    solver.write_text('net: "n.prototxt"\n')
    proc = pyirg("train", "--solver", str(solver), "--out", str(tmp_path / "o"), "--mirror")
    assert proc.returncode == 2 and "--mirror apply only with --npy-data" in proc.stderr


def test_main_checks_the_depth_irg_t_needs_before_training() -> None:
    with pytest.raises(ValueError, match="student_depth must be >= 14"):
        ExperimentConfig(methods=("baseline", "IRG-t"), student_depth=8)
    ExperimentConfig(methods=("baseline", "IRG"), student_depth=8)


def test_verify_checks_its_json_path_first(tmp_path: Path) -> None:
    proc = pyirg("verify", "--no-nets", "--json", str(tmp_path))
    assert proc.returncode == 2 and "--json" in proc.stderr and "Traceback" not in proc.stderr
