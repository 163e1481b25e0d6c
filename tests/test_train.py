"""The training driver on tiny Input-fed nets over the digits (plus one Data-layer net)."""

from __future__ import annotations

import json
import os
import signal
import sys
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import run_pyirg

os.environ.setdefault("GLOG_minloglevel", "2")
caffe = pytest.importorskip("caffe")

from caffe import layers as L  # noqa: E402
from caffe.proto import caffe_pb2  # noqa: E402
from google.protobuf import text_format  # noqa: E402

from pyirg import prepare  # noqa: E402
from pyirg.data.digits import load_digits_split  # noqa: E402
from pyirg.data.feed import array_batch_fn, pixel_mean  # noqa: E402
from pyirg.train import (  # noqa: E402
    PreflightError,
    TeacherWeightsError,
    TrainError,
    TrainingDiverged,
    TrainingInterrupted,
)
from pyirg.train.cli import main  # noqa: E402
from pyirg.train.driver import train  # noqa: E402
from pyirg.train.folder import (  # noqa: E402
    CURVES_PNG,
    METRICS_JSON,
    TEST_CSV,
    TRAIN_CSV,
    latest_snapshot,
)

BATCH = 8
XAVIER = dict(type="xavier")
FROZEN = [dict(lr_mult=0, decay_mult=0)] * 2
TEST = dict(phase=caffe.TEST)


# --------------------------------------------------------------------------- nets and data


def _input(ns: caffe.NetSpec) -> None:
    ns.data, ns.label = L.Input(shape=[dict(dim=[BATCH, 1, 8, 8]), dict(dim=[BATCH])], ntop=2)


def plain_net(path: Path, hidden: int = 16) -> Path:
    """A teacher: Input -> ip1 -> ReLU -> ip2 -> SoftmaxWithLoss (+ Accuracy in TEST)."""
    ns = caffe.NetSpec()
    _input(ns)
    ns.ip1 = L.InnerProduct(ns.data, num_output=hidden, weight_filler=XAVIER)
    ns.relu1 = L.ReLU(ns.ip1, in_place=True)
    ns.ip2 = L.InnerProduct(ns.relu1, num_output=10, weight_filler=XAVIER)
    ns.loss = L.SoftmaxWithLoss(ns.ip2, ns.label)
    ns.accuracy = L.Accuracy(ns.ip2, ns.label, include=TEST)
    path.write_text(str(ns.to_proto()))
    return path


def distill_net(path: Path) -> Path:
    """The frozen teacher above plus a ``stu_`` student and an IRG edge loss between them."""
    ns = caffe.NetSpec()
    _input(ns)
    ns.ip1 = L.InnerProduct(ns.data, num_output=16, weight_filler=XAVIER, param=FROZEN)
    ns.relu1 = L.ReLU(ns.ip1, in_place=True)
    ns.ip2 = L.InnerProduct(ns.relu1, num_output=10, weight_filler=XAVIER, param=FROZEN)
    ns.loss = L.SoftmaxWithLoss(ns.ip2, ns.label, loss_weight=0)
    ns.accuracy = L.Accuracy(ns.ip2, ns.label, include=TEST)
    ns.stu_ip1 = L.InnerProduct(ns.data, num_output=8, weight_filler=XAVIER)
    ns.stu_relu1 = L.ReLU(ns.stu_ip1, in_place=True)
    ns.stu_ip2 = L.InnerProduct(ns.stu_relu1, num_output=10, weight_filler=XAVIER)
    ns.stu_loss = L.SoftmaxWithLoss(ns.stu_ip2, ns.label)
    ns.stu_accuracy = L.Accuracy(ns.stu_ip2, ns.label, include=TEST)
    ns.bem = L.BatchEuclideanMap(ns.relu1)
    ns.stu_bem = L.BatchEuclideanMap(ns.stu_relu1)
    ns.bem_loss = L.EuclideanLoss(ns.bem, ns.stu_bem, loss_weight=0.05)
    path.write_text(str(ns.to_proto()))
    return path


def solver_param(net: Path, **overrides: object) -> caffe_pb2.SolverParameter:
    fields: dict[str, object] = dict(
        net=str(net),
        type="SGD",
        base_lr=0.05,
        momentum=0.9,
        weight_decay=5e-4,
        lr_policy="step",
        stepsize=8,
        gamma=0.5,
        max_iter=20,
        test_iter=[4],
        test_interval=10,
        snapshot=10,
        snapshot_prefix="tiny",
    )
    fields.update(overrides)
    return caffe_pb2.SolverParameter(**fields)


@pytest.fixture(scope="module")
def feeds() -> tuple[Callable, Callable]:
    split = load_digits_split()
    mean = pixel_mean(split.train_images)
    batch_fn = array_batch_fn(
        split.train_images, split.train_labels, BATCH, seed=1, mean=mean, scale=1 / 64
    )
    test_fn = array_batch_fn(
        split.test_images, split.test_labels, BATCH, shuffle=False, mean=mean, scale=1 / 64
    )
    return batch_fn, test_fn


def run(net: Path, out: Path, feeds: tuple[Callable, Callable], **kwargs: object):
    solver_overrides = kwargs.pop("solver", {})
    batch_fn, test_fn = feeds
    kwargs.setdefault("batch_fn", batch_fn)
    kwargs.setdefault("preflight", False)
    return train(
        solver_param(net, **solver_overrides), out, test_batch_fn=test_fn, progress=False, **kwargs
    )


def weights(path: Path) -> dict[str, list[np.ndarray]]:
    param = caffe_pb2.NetParameter.FromString(path.read_bytes())
    return {
        layer.name: [np.asarray(b.data, np.float32) for b in layer.blobs]
        for layer in param.layer
        if layer.blobs
    }


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        for x, y in zip(wa[name], wb[name]):
            assert np.array_equal(x, y), f"layer {name} differs"


@pytest.fixture(scope="module")
def nets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("nets")
    return {
        "plain": plain_net(root / "plain.prototxt"),
        "wide": plain_net(root / "wide.prototxt", hidden=32),
        "distill": distill_net(root / "distill.prototxt"),
    }


@pytest.fixture(scope="module")
def reference(nets: dict[str, Path], feeds, tmp_path_factory: pytest.TempPathFactory):
    """20 uninterrupted iterations of the plain net, seed 5."""
    return run(nets["plain"], tmp_path_factory.mktemp("ref") / "out", feeds, seed=5)


@pytest.fixture(scope="module")
def teacher(nets: dict[str, Path], feeds, tmp_path_factory: pytest.TempPathFactory):
    return run(
        nets["plain"], tmp_path_factory.mktemp("teacher") / "out", feeds, seed=0, max_iter=40
    )


# --------------------------------------------------------------------------- plain training


def test_training_lowers_loss_and_writes_outputs(nets, feeds, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run(nets["plain"], out, feeds, seed=0, max_iter=60, solver=dict(stepsize=30))
    losses = [row["loss"] for row in result.train_history]
    assert len(losses) == 60
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10])
    assert result.iterations == 60 and not result.interrupted
    assert 0.0 <= result.accuracy <= 1.0 and result.metrics["accuracy"] == result.accuracy
    assert [it for it, _ in result.accuracy_history] == [10, 20, 30, 40, 50, 60]
    assert result.weights == out / "tiny_iter_60.caffemodel" and result.weights.is_file()

    doc = json.loads((out / METRICS_JSON).read_text())
    assert len(doc["train"]) == 60 and doc["final"]["accuracy"] == result.accuracy
    assert {"iter", "lr", "images_per_s", "loss", "total_loss"} <= doc["train"][0].keys()
    assert doc["train"][0]["lr"] == pytest.approx(0.05)
    assert doc["train"][-1]["lr"] == pytest.approx(0.025)
    train_csv = (out / TRAIN_CSV).read_text().splitlines()
    assert train_csv[0].startswith("iter,lr,images_per_s") and len(train_csv) == 61
    assert len((out / TEST_CSV).read_text().splitlines()) == 7
    assert (out / CURVES_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_snapshots_are_atomic_and_point_at_final_files(reference) -> None:
    out = reference.out_dir
    names = sorted(p.name for p in out.iterdir())
    assert not [n for n in names if n.startswith(".")], names  # no temp files or dirs
    for it in (10, 20):
        state = caffe_pb2.SolverState.FromString((out / f"tiny_iter_{it}.solverstate").read_bytes())
        assert state.iter == it
        assert Path(state.learned_net) == out / f"tiny_iter_{it}.caffemodel"
        assert Path(state.learned_net).is_file()
    assert latest_snapshot(out, "tiny").iteration == 20


def test_latest_snapshot_skips_incomplete(tmp_path: Path) -> None:
    for name in ("s_iter_10.caffemodel", "s_iter_10.solverstate", "s_iter_30.caffemodel"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "s_iter_40.solverstate").write_bytes(b"x")
    assert latest_snapshot(tmp_path, "s").iteration == 10


def test_same_seed_same_weights(nets, feeds, reference, tmp_path: Path) -> None:
    again = run(nets["plain"], tmp_path / "a", feeds, seed=5)
    assert_same_weights(again.weights, reference.weights)
    other = run(nets["plain"], tmp_path / "b", feeds, seed=6)
    with pytest.raises(AssertionError):
        assert_same_weights(other.weights, reference.weights)


def test_resume_is_bit_exact(nets, feeds, reference, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = run(nets["plain"], out, feeds, seed=5, max_iter=10)
    assert first.iterations == 10
    with pytest.raises(TrainError, match="--resume"):  # never silently overwrite a run
        run(nets["plain"], out, feeds, seed=5)
    second = run(nets["plain"], out, feeds, seed=5, resume=True)
    assert second.iterations == 20
    assert_same_weights(second.weights, reference.weights)
    assert [r["loss"] for r in second.train_history] == [r["loss"] for r in reference.train_history]
    assert [r["iter"] for r in second.test_history] == [10, 20]


def _interrupting(fn: Callable, at: int, action: Callable[[], None]) -> Callable:
    def batch_fn(iteration: int):
        if iteration == at:
            action()
        return fn(iteration)

    return batch_fn


def test_sigterm_saves_snapshot_then_resume_matches(nets, feeds, reference, tmp_path) -> None:
    out = tmp_path / "out"
    before = signal.getsignal(signal.SIGTERM)
    killer = _interrupting(feeds[0], 5, lambda: os.kill(os.getpid(), signal.SIGTERM))
    with pytest.raises(TrainingInterrupted) as info:
        run(nets["plain"], out, feeds, seed=5, batch_fn=killer)
    assert signal.getsignal(signal.SIGTERM) is before
    assert info.value.signum == signal.SIGTERM
    stopped = info.value.result
    assert stopped.interrupted and 5 <= stopped.iterations < 10
    assert stopped.solverstate == out / f"tiny_iter_{stopped.iterations}.solverstate"
    assert stopped.solverstate.is_file() and stopped.weights.is_file()
    resumed = run(nets["plain"], out, feeds, seed=5, resume=True)
    assert_same_weights(resumed.weights, reference.weights)


def test_keyboard_interrupt_saves_snapshot(nets, feeds, reference, tmp_path: Path) -> None:
    out = tmp_path / "out"
    # What the run must put back: Python's own handler, or SIG_IGN where the test command
    # was started in the background (a non-interactive shell's & ignores SIGINT).
    before = signal.getsignal(signal.SIGINT)

    def ctrl_c() -> None:
        raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted) as info:
        run(nets["plain"], out, feeds, seed=5, batch_fn=_interrupting(feeds[0], 7, ctrl_c))
    assert info.value.signum == signal.SIGINT
    assert info.value.result.iterations == 7
    assert (out / "tiny_iter_7.caffemodel").is_file()
    assert signal.getsignal(signal.SIGINT) is before
    resumed = run(nets["plain"], out, feeds, seed=5, resume=True)
    assert_same_weights(resumed.weights, reference.weights)


def test_second_signal_stops_at_once(nets, feeds, tmp_path: Path) -> None:
    out = tmp_path / "out"

    def twice() -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(KeyboardInterrupt) as info:
        run(nets["plain"], out, feeds, batch_fn=_interrupting(feeds[0], 3, twice))
    assert not isinstance(info.value, TrainingInterrupted)
    assert not list(out.glob("*.caffemodel"))  # no snapshot, and no half-written one
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


def test_input_fed_net_needs_batch_fn(nets, feeds, tmp_path: Path) -> None:
    with pytest.raises(TrainError, match="batch_fn"):
        run(nets["plain"], tmp_path / "out", feeds, batch_fn=None)


# --------------------------------------------------------------------------- teacher weights


def test_distillation_needs_teacher_weights(nets, feeds, tmp_path: Path) -> None:
    with pytest.raises(TeacherWeightsError, match="ip1, ip2"):
        run(nets["distill"], tmp_path / "out", feeds)
    assert not list((tmp_path / "out").glob("*.caffemodel"))


def without_layer(weights: Path, name: str, out: Path) -> Path:
    """A copy of a .caffemodel without layer ``name``."""
    param = caffe_pb2.NetParameter.FromString(weights.read_bytes())
    kept = [layer for layer in param.layer if layer.name != name]
    del param.layer[:]
    param.layer.extend(kept)
    out.write_bytes(param.SerializeToString())
    return out


def test_incomplete_teacher_weights_are_refused(nets, feeds, teacher, tmp_path: Path) -> None:
    partial = without_layer(teacher.weights, "ip2", tmp_path / "partial.caffemodel")
    with pytest.raises(TeacherWeightsError, match="teacher layer.*ip2") as info:
        run(nets["distill"], tmp_path / "out", feeds, teacher_weights=partial)
    assert "ip1" not in str(info.value).split("layer(s)")[1]
    junk = tmp_path / "junk.caffemodel"
    junk.write_bytes(b"\xff\xfe not a protobuf")
    with pytest.raises(TeacherWeightsError, match="junk.caffemodel"):
        run(nets["distill"], tmp_path / "out2", feeds, teacher_weights=junk)


def test_teacher_shape_mismatch_is_refused(nets, feeds, tmp_path: Path) -> None:
    wide = run(nets["wide"], tmp_path / "wide", feeds, max_iter=1)
    with pytest.raises(TeacherWeightsError) as info:
        run(nets["distill"], tmp_path / "out", feeds, teacher_weights=wide.weights)
    message = str(info.value)
    assert "'ip1' blob 0" in message and "(32, 64)" in message and "(16, 64)" in message


def test_teacher_weights_need_a_distillation_net(nets, feeds, teacher, tmp_path) -> None:
    with pytest.raises(TeacherWeightsError, match="stu_"):
        run(nets["plain"], tmp_path / "out", feeds, teacher_weights=teacher.weights)


def test_distillation_trains_student_with_frozen_teacher(nets, feeds, teacher, tmp_path) -> None:
    result = run(nets["distill"], tmp_path / "out", feeds, teacher_weights=teacher.weights)
    final, loaded = weights(result.weights), weights(teacher.weights)
    for name in ("ip1", "ip2"):  # lr_mult 0: the teacher is loaded and stays as it was
        for x, y in zip(final[name], loaded[name]):
            np.testing.assert_array_equal(x, y)
    assert result.metrics["teacher_accuracy"] == teacher.metrics["accuracy"]
    assert "student_accuracy" in result.metrics and result.accuracy is not None
    row = result.train_history[-1]
    assert {"stu_loss", "bem_loss"} <= row.keys()  # loss terms with non-zero weight
    assert row["total_loss"] == pytest.approx(row["stu_loss"] + 0.05 * row["bem_loss"])


# --------------------------------------------------------------------------- pre-flight


def test_preflight_refuses_what_check_reports(nets, feeds, tmp_path: Path) -> None:
    """train runs pyirg.check first: an unfrozen teacher (error) stops it before Caffe."""
    net = caffe_pb2.NetParameter()
    text_format.Merge(nets["distill"].read_text(), net)
    next(layer for layer in net.layer if layer.name == "ip1").param[0].lr_mult = 1
    bad = tmp_path / "unfrozen.prototxt"
    bad.write_text(str(net))
    with pytest.raises(PreflightError, match="teacher-not-frozen.*'ip1'"):
        run(bad, tmp_path / "a", feeds, preflight=True)
    assert not (tmp_path / "a" / "run.json").exists()
    result = run(nets["plain"], tmp_path / "b", feeds, preflight=True, max_iter=2)
    assert result.iterations == 2


# --------------------------------------------------------------------------- command line


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data") / "digits"
    assert prepare.main(["digits", str(out), "--quiet"]) == 0
    return out


def _solver_file(path: Path, net: Path, **overrides: object) -> Path:
    path.write_text(str(solver_param(net, **overrides)))
    return path


def test_cli_npy_fed(nets, digits_dir: Path, tmp_path: Path, capsys) -> None:
    solver = _solver_file(tmp_path / "solver.prototxt", Path("plain.prototxt"))
    out = tmp_path / "out"
    argv = ["--solver", str(solver), "--net", str(nets["plain"]), "--out", str(out)]
    argv += ["--npy-data", str(digits_dir), "--pad", "1", "--scale", "0.015625"]
    argv += ["--no-progress", "--no-preflight", "--snapshot-interval", "4"]
    assert main([*argv, "--max-iter", "12"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["weights"] == str(out / "tiny_iter_12.caffemodel")
    assert 0.0 <= printed["accuracy"] <= 1.0
    assert {p.name for p in out.glob("*.solverstate")} == {
        f"tiny_iter_{i}.solverstate" for i in (4, 8, 12)
    }
    assert main([*argv, "--max-iter", "12"]) == 2  # snapshots exist: refuse without --resume
    assert "--resume" in capsys.readouterr().err
    assert main([*argv, "--max-iter", "16", "--resume"]) == 0
    assert json.loads(capsys.readouterr().out)["iter"] == 16


def test_cli_data_layer_net(digits_dir: Path, tmp_path: Path, capsys) -> None:
    """A net reading the prepared LMDBs (padded train + mean_pad + crop), solver-relative."""
    ns = caffe.NetSpec()
    ns.data, ns.label = L.Data(
        source=str(digits_dir / "train_pad_lmdb"),
        backend=caffe.params.Data.LMDB,
        batch_size=BATCH,
        transform_param=dict(
            mean_file=str(digits_dir / "mean_pad.binaryproto"), crop_size=8, scale=1 / 64
        ),
        include=dict(phase=caffe.TRAIN),
        ntop=2,
    )
    train_layers = str(ns.to_proto())
    ns = caffe.NetSpec()
    ns.data, ns.label = L.Data(
        source=str(digits_dir / "test_lmdb"),
        backend=caffe.params.Data.LMDB,
        batch_size=BATCH,
        transform_param=dict(mean_file=str(digits_dir / "mean.binaryproto"), scale=1 / 64),
        include=TEST,
        ntop=2,
    )
    ns.ip1 = L.InnerProduct(ns.data, num_output=10, weight_filler=XAVIER)
    ns.loss = L.SoftmaxWithLoss(ns.ip1, ns.label)
    ns.accuracy = L.Accuracy(ns.ip1, ns.label, include=TEST)
    (tmp_path / "lmdb_net.prototxt").write_text(train_layers + str(ns.to_proto()))
    # the solver names its net relative to its own directory, not to the cwd
    solver = _solver_file(tmp_path / "solver.prototxt", Path("lmdb_net.prototxt"))
    out = tmp_path / "out"
    argv = ["--solver", str(solver), "--out", str(out), "--max-iter", "10"]
    assert main([*argv, "--no-progress", "--no-preflight"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["iter"] == 10 and 0.0 <= printed["accuracy"] <= 1.0


def test_cli_refusal_is_reported(nets, tmp_path: Path, capsys) -> None:
    solver = _solver_file(tmp_path / "solver.prototxt", nets["distill"])
    argv = ["--solver", str(solver), "--out", str(tmp_path / "out"), "--no-preflight"]
    assert main([*argv, "--no-progress"]) == 2
    assert "ip1, ip2" in capsys.readouterr().err
    # Counts below their least are named as the option given (else as the solver's field).
    for option, value, text in (
        ("--max-iter", "0", "--max-iter must be >= 1, got 0"),
        ("--test-interval", "-5", "--test-interval must be >= 0, got -5"),
        ("--snapshot-interval", "-1", "--snapshot-interval must be >= 0, got -1"),
    ):
        assert main([*argv, option, value]) == 2
        assert text in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused starts leave no folder behind
    nested = tmp_path / "a" / "b" / "run"  # nor the parents they made for it
    assert main(["--solver", str(tmp_path / "none.prototxt"), "--out", str(nested)]) == 2
    assert not (tmp_path / "a").exists()
    # ...but never what is not theirs: a run started beside it under the same new parent
    beside = tmp_path / "sweep" / "a"
    beside.mkdir(parents=True)
    (beside / "run.json").write_text("{}")
    from pyirg.train.driver import _take_back

    (tmp_path / "sweep" / "b").mkdir()
    _take_back([], tmp_path / "sweep" / "b", tmp_path / "sweep")
    assert not (tmp_path / "sweep" / "b").exists() and (beside / "run.json").read_text() == "{}"


# ------------------------------------------------------------------ shared initial weights


def test_init_weights_replace_the_fillers(nets, feeds, teacher, tmp_path: Path) -> None:
    """--init-weights: the run starts from the file, not from its seed's fillers."""
    seen: dict[int, dict[str, np.ndarray]] = {}

    def grab(seed: int):
        def on_iteration(done: int, net) -> None:
            if done == 0:
                seen[seed] = {n: b[0].data.copy() for n, b in net.params.items()}

        return on_iteration

    run(nets["plain"], tmp_path / "a", feeds, seed=3, max_iter=1, on_iteration=grab(3))
    run(
        nets["plain"], tmp_path / "b", feeds, seed=4, max_iter=1,
        init_weights=teacher.weights, on_iteration=grab(4),
    )  # fmt: skip
    start = weights(teacher.weights)
    for name, value in seen[4].items():
        assert np.array_equal(value.ravel(), start[name][0].ravel()), name
    assert not np.array_equal(seen[3]["ip1"], seen[4]["ip1"])


def test_init_weights_missing_a_trained_layer_are_refused(nets, feeds, teacher, tmp_path) -> None:
    partial = without_layer(teacher.weights, "ip2", tmp_path / "partial.caffemodel")
    with pytest.raises(TeacherWeightsError, match="trained layer.*ip2"):
        run(nets["plain"], tmp_path / "out", feeds, init_weights=partial)


# -------------------------------------------------------------------------------- divergence


def test_divergence_stops_training_and_keeps_the_last_finite_weights(
    nets, feeds, tmp_path: Path
) -> None:
    """base_lr 1e6: the loss goes non-finite within a few iterations; training must stop
    there (not run on and report an accuracy), naming the iteration, loss and lr."""
    out = tmp_path / "out"
    with pytest.raises(TrainingDiverged) as info:
        run(nets["plain"], out, feeds, solver=dict(base_lr=1e6), snapshot_interval=0)
    message = str(info.value)
    assert "training diverged at iteration" in message and "learning rate 1e+06" in message
    assert "loss" in message
    saved = Path(info.value.last_finite)
    assert saved.is_file() and saved.parent == out
    for blobs in weights(saved).values():
        assert all(np.isfinite(b).all() for b in blobs)
    it = int(saved.name.split("_iter_")[1].split("_")[0])
    assert it < 20  # it stopped early, before max_iter
    rows = json.loads((out / METRICS_JSON).read_text())
    assert rows  # the metrics up to the divergence are written
    assert not list(out.glob("tiny_iter_20.*"))  # no final snapshot of NaN weights


def test_cli_exits_non_zero_on_divergence(nets, digits_dir: Path, tmp_path: Path, capsys) -> None:
    solver = _solver_file(tmp_path / "solver.prototxt", Path("plain.prototxt"))
    text = solver.read_text().replace("base_lr: 0.05", "base_lr: 1000000.0")
    solver.write_text(text)
    argv = ["--solver", str(solver), "--net", str(nets["plain"]), "--out", str(tmp_path / "o")]
    argv += ["--npy-data", str(digits_dir), "--no-progress", "--no-preflight"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "diverged at iteration" in err and "last_finite.caffemodel" in err


# ------------------------------------------------------------ resume from complete snapshots


def _cut_caffemodel_at_layer(path: Path) -> None:
    """Cut a .caffemodel's bytes where its last layer with blobs begins (a layer boundary)."""
    param = caffe_pb2.NetParameter.FromString(path.read_bytes())
    whole = param.SerializeToString()
    last = max(i for i, layer in enumerate(param.layer) if layer.blobs)
    kept = list(param.layer)[:last]
    del param.layer[:]
    param.layer.extend(kept)
    prefix = param.SerializeToString()
    assert whole.startswith(prefix) and len(prefix) < len(whole)  # really a byte prefix
    path.write_bytes(prefix)


@pytest.mark.parametrize(
    "damage",
    [
        "caffemodel_at_layer_boundary",
        "caffemodel_inside_a_record",
        "solverstate_after_history",
        "solverstate_inside_a_record",
    ],
)
def test_resume_falls_back_past_a_truncated_snapshot(
    nets, feeds, reference, tmp_path: Path, damage: str, capfd
) -> None:
    out = tmp_path / "out"
    run(nets["plain"], out, feeds, seed=5, max_iter=20)  # snapshots at 10 and 20
    model, state = out / "tiny_iter_20.caffemodel", out / "tiny_iter_20.solverstate"
    if damage == "caffemodel_at_layer_boundary":
        _cut_caffemodel_at_layer(model)
        caffe_pb2.NetParameter.FromString(model.read_bytes())  # still parses
    elif damage == "caffemodel_inside_a_record":
        model.write_bytes(model.read_bytes()[:-17])
    elif damage == "solverstate_after_history":
        full = caffe_pb2.SolverState.FromString(state.read_bytes())
        cut = caffe_pb2.SolverState(iter=full.iter, learned_net=full.learned_net)
        cut.history.extend(full.history[:1])
        state.write_bytes(cut.SerializeToString())
    else:
        state.write_bytes(state.read_bytes()[:-7])
    resumed = run(nets["plain"], out, feeds, seed=5, resume=True)
    assert "not resuming from iteration 20" in capfd.readouterr().err
    assert resumed.iterations == 20  # from iteration 10, retrained to 20
    assert_same_weights(resumed.weights, reference.weights)


def test_resume_with_nothing_complete_is_refused(nets, feeds, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run(nets["plain"], out, feeds, seed=5, max_iter=10, snapshot_interval=0)
    (out / "tiny_iter_10.caffemodel").write_bytes(b"")
    with pytest.raises(TrainError, match="no complete snapshot"):
        run(nets["plain"], out, feeds, seed=5, resume=True)


def test_resume_with_nothing_to_resume_says_so(nets, feeds, tmp_path: Path, capfd) -> None:
    result = run(nets["plain"], tmp_path / "fresh", feeds, seed=5, max_iter=2, resume=True)
    assert result.iterations == 2
    assert "holds no snapshot" in capfd.readouterr().err


# ------------------------------------------------------------------ run folders and --out


def test_another_run_into_the_same_out_is_refused(nets, feeds, tmp_path: Path) -> None:
    """A second solver (another snapshot stem) must not overwrite the first run's records."""
    out = tmp_path / "out"
    first = run(nets["plain"], out, feeds, seed=5, max_iter=4)
    rows = (out / TRAIN_CSV).read_text()
    with pytest.raises(TrainError, match="already holds a run"):
        run(nets["plain"], out, feeds, seed=5, solver=dict(snapshot_prefix="other"))
    assert (out / TRAIN_CSV).read_text() == rows and first.weights.is_file()
    # resuming with other settings names the difference
    with pytest.raises(TrainError, match="other settings.*seed: 5 there, 6 now"):
        run(nets["plain"], out, feeds, seed=6, resume=True)
    with pytest.raises(TrainError, match="other settings.*solver"):
        run(nets["plain"], out, feeds, seed=5, resume=True, solver=dict(base_lr=0.5))


def test_overwrite_moves_only_a_run_folder_aside(nets, feeds, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run(nets["plain"], out, feeds, seed=5, max_iter=4)
    again = run(nets["plain"], out, feeds, seed=5, max_iter=2, overwrite=True)
    assert again.iterations == 2
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("out.replaced-")]
    assert len(aside) == 1 and (aside[0] / "tiny_iter_4.caffemodel").is_file()
    other = tmp_path / "not_a_run"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(TrainError, match="no run folder"):
        run(nets["plain"], other, feeds, seed=5, max_iter=2, overwrite=True)
    assert (other / "notes.txt").read_text() == "mine"


def test_gpu_on_a_cpu_only_build_is_refused(nets, feeds, tmp_path: Path) -> None:
    from pyirg.caffeio import caffe_has_cuda

    if caffe_has_cuda():
        pytest.skip("this Caffe is a CUDA build")
    with pytest.raises(TrainError, match="CPU_ONLY build"):
        run(nets["plain"], tmp_path / "out", feeds, gpu=0)
    assert not (tmp_path / "out").exists()  # the folder it made is gone again
    # a run refused during set-up leaves no record: the same --out works afterwards
    assert run(nets["plain"], tmp_path / "out", feeds, max_iter=2).iterations == 2


def test_non_finite_test_outputs_are_an_error_not_an_accuracy(nets, feeds, tmp_path) -> None:
    """Caffe's Accuracy layer counts NaN logits as correct (accuracy 1.0)."""
    batch_fn, test_fn = feeds

    def nan_test(i: int) -> dict:
        batch = dict(test_fn(i))
        batch["data"] = np.full_like(batch["data"], np.nan)
        return batch

    with pytest.raises(TrainError, match="not finite at iteration 10"):
        run(nets["plain"], tmp_path / "out", (batch_fn, nan_test), seed=5)


_KILLED_CHILD = r"""
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import test_train as t
from pyirg.data.feed import array_batch_fn, pixel_mean
from pyirg.data.digits import load_digits_split
from pyirg.train import folder as snapshots

real = snapshots.os.replace
def slow_replace(src, dst):
    if str(dst).endswith("_iter_10.solverstate"):  # the .caffemodel is in place already
        Path(sys.argv[4]).touch()
        time.sleep(120)
    return real(src, dst)
snapshots.os.replace = slow_replace
split = load_digits_split()
mean = pixel_mean(split.train_images)
feeds = (
    array_batch_fn(split.train_images, split.train_labels, t.BATCH, seed=1, mean=mean,
                   scale=1 / 64),
    array_batch_fn(split.test_images, split.test_labels, t.BATCH, shuffle=False, mean=mean,
                   scale=1 / 64),
)
t.run(Path(sys.argv[2]), Path(sys.argv[3]), feeds, seed=5, snapshot_interval=5)
"""


def test_sigkill_while_writing_a_snapshot_then_resume(nets, feeds, reference, tmp_path) -> None:
    """A kill between the two files of a snapshot: resume falls back to the last complete
    pair and still reproduces the uninterrupted run bit for bit."""
    import subprocess
    import time

    out, signal_file = tmp_path / "out", tmp_path / "writing"
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_CHILD, str(Path(__file__).parent), str(nets["plain"]),
         str(out), str(signal_file)],
        env=dict(os.environ, GLOG_minloglevel="2"),
    )  # fmt: skip
    try:
        deadline = time.time() + 60
        while not signal_file.exists() and child.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert signal_file.exists(), "the child never reached the snapshot write"
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
    assert (out / "tiny_iter_10.caffemodel").is_file()
    assert not (out / "tiny_iter_10.solverstate").exists()  # half a snapshot on disk
    resumed = run(nets["plain"], out, feeds, seed=5, resume=True, snapshot_interval=5)
    assert resumed.iterations == 20
    assert_same_weights(resumed.weights, reference.weights)
    assert not list(out.glob(".snapshot-tmp-*"))


def test_review_cases_of_run_folders(nets, feeds, teacher, tmp_path: Path) -> None:
    # a resumed distillation run needs no teacher weights again (its snapshot has them)
    out = tmp_path / "distill"
    run(nets["distill"], out, feeds, seed=5, max_iter=10, teacher_weights=teacher.weights)
    assert run(nets["distill"], out, feeds, seed=5, max_iter=12, resume=True).iterations == 12
    # --overwrite and --resume contradict each other
    with pytest.raises(TrainError, match="choose one"):
        run(nets["plain"], out, feeds, resume=True, overwrite=True)
    # a NetParameter net with --overwrite: the moved folder must not take the new net along
    net = caffe_pb2.NetParameter()
    text_format.Merge(nets["plain"].read_text(), net)
    plain = tmp_path / "plain"
    run(nets["plain"], plain, feeds, seed=5, max_iter=2)
    again = train(
        solver_param(nets["plain"]), plain, net=net, batch_fn=feeds[0], test_batch_fn=feeds[1],
        progress=False, preflight=False, max_iter=2, overwrite=True,
    )  # fmt: skip
    assert again.iterations == 2
    # a corrupt run record is a message, not a traceback
    (plain / "run.json").write_text("{not json")
    with pytest.raises(TrainError, match="unreadable run record"):
        run(nets["plain"], plain, feeds, seed=5, max_iter=4, resume=True)


def test_ignore_label_is_not_a_label_out_of_range(tmp_path: Path, feeds) -> None:
    ns = caffe.NetSpec()
    _input(ns)
    ns.ip = L.InnerProduct(ns.data, num_output=10, weight_filler=XAVIER)
    ns.loss = L.SoftmaxWithLoss(ns.ip, ns.label, loss_param=dict(ignore_label=255))
    path = tmp_path / "ignore.prototxt"
    path.write_text(str(ns.to_proto()))
    batch_fn, test_fn = feeds

    def with_ignored(i: int) -> dict:
        batch = dict(batch_fn(i))
        labels = np.array(batch["label"], copy=True)
        labels[0] = 255
        batch["label"] = labels
        return batch

    result = run(path, tmp_path / "out", (with_ignored, test_fn), max_iter=2, test_interval=0,
                 solver=dict(test_iter=[]))  # fmt: skip
    assert result.iterations == 2


def test_a_binary_caffemodel_given_as_a_net_names_the_file(tmp_path: Path) -> None:
    model = tmp_path / "teacher.caffemodel"
    model.write_bytes(b"\x0a\x04name\xa2\x06\xff\xfe\xfd")
    solver = tmp_path / "solver.prototxt"
    solver.write_text(f'net: "{model}"\nbase_lr: 0.1\nmax_iter: 2\n')
    proc = run_pyirg("train", "--solver", str(solver), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "teacher.caffemodel" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_generated_input_solvers_test_and_labels_past_the_classes_are_refused(
    tmp_path: Path,
) -> None:
    """Generated Input-fed solvers had no test_iter (no test net, --test-interval ignored);
    a 5-class net fed the 10 digit classes corrupted memory (glibc: double free)."""
    nets = tmp_path / "nets"
    proc = run_pyirg(
        "gen", "--method", "baseline", "--dataset", "digits", "--data", "input",
        "--student-depth", "8", "--num-classes", "5", "--name", "b5", "--out", str(nets),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    solver = caffe_pb2.SolverParameter()
    from google.protobuf import text_format

    text_format.Merge((nets / "solver_b5.prototxt").read_text(), solver)
    assert list(solver.test_iter) and solver.test_iter[0] >= 1
    # Without the arrays to feed it, the refusal names the option that gives them.
    proc = run_pyirg(
        "train", "--solver", str(nets / "solver_b5.prototxt"),
        "--out", str(tmp_path / "unfed"), "--max-iter", "4", "--no-progress",
    )  # fmt: skip
    assert proc.returncode == 2 and "Input-fed" in proc.stderr and "--npy-data" in proc.stderr
    data = tmp_path / "digits"
    assert run_pyirg("prepare-data", "digits", str(data), "--quiet").returncode == 0
    proc = run_pyirg(
        "train", "--solver", str(nets / "solver_b5.prototxt"), "--npy-data", str(data),
        "--out", str(tmp_path / "run"), "--max-iter", "4", "--no-progress",
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "5 classes" in proc.stderr and "labels" in proc.stderr
    assert not (tmp_path / "run").exists()  # refused at the first batch: nothing kept
    proc = run_pyirg(
        "train", "--solver", str(nets / "solver_b5.prototxt"), "--npy-data", str(data),
        "--out", str(tmp_path / "run"), "--pad", "-1",
    )  # fmt: skip
    assert proc.returncode == 2 and "train: error: --pad must be >= 0, got -1" in proc.stderr


def test_nan_teacher_weights_are_refused(tmp_path: Path) -> None:
    from pyirg.train import TeacherWeightsError
    from pyirg.train.weights import require_finite

    net = types.SimpleNamespace(
        params={"ip1": [types.SimpleNamespace(data=np.array([1.0, np.nan]))]}
    )
    with pytest.raises(TeacherWeightsError, match="non-finite.*ip1"):
        require_finite(net, ["ip1"], tmp_path / "nan.caffemodel")
    require_finite(net, [], tmp_path / "nan.caffemodel")


def test_teacher_weights_fifo_is_refused_not_waited_on(tmp_path: Path) -> None:
    from pyirg.train import TrainError
    from pyirg.train.driver import TrainSettings
    from pyirg.train.folder import run_settings

    fifo = tmp_path / "teacher.caffemodel"
    os.mkfifo(fifo)
    settings = TrainSettings(teacher_weights=str(fifo))
    with pytest.raises(TrainError, match="not a regular file"):
        run_settings(caffe_pb2.SolverParameter(), caffe_pb2.NetParameter(), settings)


def test_input_feeding_options_without_npy_data_are_refused(tmp_path: Path) -> None:
    solver = tmp_path / "solver.prototxt"
    solver.write_text('net: "n.prototxt"\n')
    proc = run_pyirg("train", "--solver", str(solver), "--out", str(tmp_path / "o"), "--mirror")
    assert proc.returncode == 2 and "--mirror apply only with --npy-data" in proc.stderr


def test_a_fifo_solver_is_refused_not_waited_on(tmp_path: Path) -> None:
    fifo = tmp_path / "solver.prototxt"
    os.mkfifo(fifo)
    proc = run_pyirg("train", "--solver", str(fifo), "--out", str(tmp_path / "o"), timeout=60)
    assert proc.returncode == 2 and "not a regular file" in proc.stderr


def test_a_refusal_listing_a_whole_net_stays_one_readable_line(tmp_path: Path) -> None:
    """A teacher of another depth mismatches every layer: the message names the first few
    and counts the rest instead of printing kilobytes on one line."""
    from pyirg.caffeio import write_binary
    from pyirg.train import TeacherWeightsError
    from pyirg.train.weights import check_weights

    weights = caffe_pb2.NetParameter(name="teacher")
    for i in range(40):
        blob = weights.layer.add(name=f"conv{i}", type="Convolution").blobs.add()
        blob.shape.dim.extend([8, 8, 3, 3])
    write_binary(tmp_path / "t.caffemodel", weights)
    shapes = {f"conv{i}": [(16, 8, 3, 3)] for i in range(40)}
    with pytest.raises(TeacherWeightsError) as info:
        check_weights(shapes, tmp_path / "t.caffemodel")
    text = str(info.value)
    assert "layer 'conv0' blob 0: weights (8, 8, 3, 3) vs net (16, 8, 3, 3)" in text
    assert "(34 more, 40 in all)" in text and "conv39" not in text and len(text) < 600
    with pytest.raises(TeacherWeightsError) as info:
        check_weights({}, tmp_path / "t.caffemodel", required=[f"fc{i}" for i in range(9)])
    assert "fc5, ... (3 more, 9 in all)" in str(info.value)
