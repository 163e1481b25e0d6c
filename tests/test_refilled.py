"""Tests of REFILLED's nets and workflow (pyirg.refilled, pyirg.two_stage): the stage
nets build and train in pycaffe, their losses equal the PyTorch reference on the nets'
own blobs, the centers and the NCM accuracy equal numpy written here, and ``pyirg
refilled`` runs both stages end to end, cross-task."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

caffe = pytest.importorskip("caffe")
# The test command builds Caffe with every layer of caffe_layers/: one missing is a bug.
assert {"TripletRelationLoss", "LocalCenterKDLoss"} <= set(caffe.layer_type_list()), (
    "this Caffe lacks the REFILLED layers: rebuild it (bash tools/build_caffe.sh)"
)
import torch  # noqa: E402

from pyirg import two_stage  # noqa: E402
from pyirg.arch import cifar_resnet  # noqa: E402
from pyirg.backbones import WideResNetSpec  # noqa: E402
from pyirg.caffeio import caffe_net, read_binary  # noqa: E402
from pyirg.data.core import DATASETS  # noqa: E402
from pyirg.netspec import DataConfig  # noqa: E402
from pyirg.refilled import (  # noqa: E402
    CENTER_KD,
    RefilledConfig,
    class_centers,
    ncm_accuracy,
    stage1_net,
    stage2_net,
    write_centers,
)
from pyirg.torch import refilled as ref  # noqa: E402

DIGITS = DataConfig(kind="input", dataset=DATASETS["digits"], train_batch=12, test_batch=12)
TEACHER = cifar_resnet(8, 0.5, 10, 1)
STUDENT = WideResNetSpec(10, 1, num_classes=10, in_channels=1)


def _feed(net, seed: int = 0, classes: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    net.blobs["Data1"].data[...] = rng.normal(size=net.blobs["Data1"].data.shape)
    labels = np.arange(12) % classes
    net.blobs["Data2"].data[...] = labels
    return labels


@pytest.mark.parametrize("mode", ["TRIPLET", "TUPLE"])
def test_stage1_loss_is_the_reference_on_the_nets_own_embeddings(mode: str) -> None:
    net = caffe_net(stage1_net(RefilledConfig(TEACHER, STUDENT, DIGITS, mode=mode)), "TRAIN")
    labels = _feed(net)
    loss = float(net.forward()["relation_loss"])
    student = torch.tensor(net.blobs["stu_pool"].data, dtype=torch.float64)
    teacher = torch.tensor(net.blobs["Pooling1"].data, dtype=torch.float64)
    expected = ref.triplet_relation_loss(student, teacher, torch.tensor(labels), mode=mode)
    assert len(ref.mine_triplets(student, torch.tensor(labels))) > 0
    assert loss == pytest.approx(float(expected), rel=1e-3, abs=1e-4)
    net.backward()
    assert np.abs(net.params["stu_conv1"][0].diff).sum() > 0  # the student learns
    assert not np.abs(net.params["Convolution1"][0].diff).any()  # the teacher does not


@pytest.mark.parametrize("centers", ["GLOBAL", "LOCAL"])
def test_stage2_loss_is_the_reference_with_the_centers_blob(centers: str) -> None:
    cfg = RefilledConfig(TEACHER, STUDENT, DIGITS, centers=centers)
    proto = stage2_net(cfg)
    kd = next(layer for layer in proto.layer if layer.name == CENTER_KD)
    assert [(p.lr_mult, p.decay_mult) for p in kd.param] == [(0, 0)]
    net = caffe_net(proto, "TRAIN")
    rng = np.random.default_rng(3)
    mu = rng.normal(size=net.params[CENTER_KD][0].data.shape)
    net.params[CENTER_KD][0].data[...] = mu
    labels = _feed(net, 1, classes=4)
    out = net.forward()
    logits = torch.tensor(net.blobs["stu_fc"].data, dtype=torch.float64)
    teacher = torch.tensor(net.blobs["Pooling1"].data.reshape(12, -1), dtype=torch.float64)
    given = torch.tensor(mu) if centers == "GLOBAL" else None
    expected = ref.local_center_kd_loss(
        logits, teacher, torch.tensor(labels), centers=given, mode=centers
    )
    assert float(out[CENTER_KD]) == pytest.approx(float(expected), rel=1e-3)


def test_centers_and_nearest_class_mean_against_numpy(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    feats, labels = rng.normal(size=(30, 5)) + 2, np.arange(30) % 3
    centers = class_centers(feats, labels, 3)
    for c in range(3):
        mean = feats[labels == c].mean(axis=0)
        np.testing.assert_allclose(centers[c], mean / np.linalg.norm(mean))
    with pytest.raises(ValueError, match=r"class\(es\) \[3\]"):
        class_centers(feats, labels, 4)
    # NCM: a test point takes the class of the nearest mean of normalized embeddings.
    train = np.array([[1.0, 0], [2, 0.1], [0, 1], [0.1, 3]])
    test = np.array([[5.0, 1], [1, 4], [-1, 0.2]])
    unit = train / np.linalg.norm(train, axis=1, keepdims=True)
    means = np.stack([unit[:2].mean(0), unit[2:].mean(0)])
    t = test / np.linalg.norm(test, axis=1, keepdims=True)
    predicted = ((t[:, None] - means[None]) ** 2).sum(-1).argmin(1)
    truth = np.array([0, 1, 0])
    assert ncm_accuracy(train, np.array([0, 0, 1, 1]), test, truth) == np.mean(predicted == truth)
    # The centers travel inside a copy of the teacher's weights.
    net = caffe_net(stage1_net(RefilledConfig(TEACHER, STUDENT, DIGITS)), "TEST")
    weights = tmp_path / "t.caffemodel"
    net.save(str(weights))
    write_centers(weights, centers, tmp_path / "tc.caffemodel")
    model = read_binary(tmp_path / "tc.caffemodel")
    blob = next(la for la in model.layer if la.name == CENTER_KD).blobs[0]
    assert list(blob.shape.dim) == [3, 5]
    with pytest.raises(ValueError, match="already holds"):
        write_centers(tmp_path / "tc.caffemodel", centers, tmp_path / "again.caffemodel")


def test_bad_settings_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="mode must be one of"):
        RefilledConfig(TEACHER, STUDENT, DIGITS, mode="PAIR")
    with pytest.raises(ValueError, match="tau1"):
        RefilledConfig(TEACHER, STUDENT, DIGITS, tau1=0)
    with pytest.raises(ValueError, match="3-channel input"):
        RefilledConfig(cifar_resnet(8), STUDENT, DIGITS)
    with pytest.raises(ValueError, match="wrn-DEPTH-WIDEN"):
        two_stage.parse_network("wrn-16", 10, 1)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--stage1-iter", "1"], "--stage1-iter must be >= 2, got 1"),
        (["--stage2-iter", "0"], "--stage2-iter must be >= 1, got 0"),
        (["--batch", "0"], "--batch must be >= 1, got 0"),
        (["--lr1", "-1"], "--lr1 must be a positive finite number"),
        (["--lr2", "nan"], "--lr2 must be a positive finite number"),
        (["--weight-decay", "-0.1"], "--weight-decay must be a finite number >= 0"),
        (["--classes", "5"], "--classes 5: a single class leaves nothing to tell apart"),
    ],
)
def test_pyirg_refilled_names_the_option_it_refuses(argv, message, tmp_path, capsys) -> None:
    """Before any data is read or folder made: the schedules' own complaints named no option."""
    out = tmp_path / "run"
    assert two_stage.main(["--data-dir", str(tmp_path / "none"), "--out", str(out), *argv]) == 2
    assert message in capsys.readouterr().err and not out.exists()


def test_pyirg_refilled_runs_both_stages_cross_task(tmp_path: Path, capsys) -> None:
    from pyirg import prepare

    data = tmp_path / "digits"
    assert prepare.main(["digits", str(data), "--quiet"]) == 0
    alone = [
        "--data-dir", str(data), "--classes", "0", "1", "2", "3", "4", "--student", "resnet-8",
        "--alone", "--stage2-iter", "40", "--batch", "32", "--no-progress",
        "--out", str(tmp_path / "teacher"),
    ]  # fmt: skip
    assert two_stage.main(alone) == 0, capsys.readouterr().err
    trained = json.loads((tmp_path / "teacher" / "refilled.json").read_text())
    assert trained["network"] == "ResNet-8" and trained["accuracy"] > 0.3  # 5 classes: 0.2
    teacher = trained["weights"]
    argv = [
        "--data-dir", str(data), "--classes", "5", "6", "7", "8", "9",
        "--teacher", "resnet-8", "--teacher-weights", str(teacher),
        "--student", "wrn-10-1", "--out", str(tmp_path / "run"), "--mode", "TUPLE",
        "--stage1-iter", "12", "--stage2-iter", "12", "--batch", "32", "--no-progress",
    ]  # fmt: skip
    assert two_stage.main(argv) == 0, capsys.readouterr().err
    result = json.loads((tmp_path / "run" / "refilled.json").read_text())
    assert 0 <= result["stage1_ncm_accuracy"] <= 1 and 0 <= result["student_accuracy"] <= 1
    assert result["pair"]["teacher"] == "ResNet-8" and result["pair"]["student"] == "WRN-10-1"
    for stage in ("stage1", "stage2"):
        assert (tmp_path / "run" / stage / "net_iter_12.caffemodel").is_file()
    # Stage 2 started from stage 1's student and kept the centers it was given.
    two = read_binary(tmp_path / "run" / "stage2" / "net_iter_12.caffemodel")
    centers = next(la for la in two.layer if la.name == CENTER_KD).blobs[0]
    given = read_binary(tmp_path / "run" / "teacher_centers.caffemodel")
    assert centers == next(la for la in given.layer if la.name == CENTER_KD).blobs[0]
    assert "stage 1: nearest-class-mean accuracy" in capsys.readouterr().out
    # The same command again resumes both (finished) stages: the same result.
    assert two_stage.main(argv) == 0, capsys.readouterr().err
    again = json.loads((tmp_path / "run" / "refilled.json").read_text())
    assert again["student_accuracy"] == result["student_accuracy"]
    assert again["stage1_ncm_accuracy"] == result["stage1_ncm_accuracy"]
    capsys.readouterr()
    # One-line errors: a teacher file that is missing.
    argv[argv.index(str(teacher))] = str(tmp_path / "missing.caffemodel")
    argv[argv.index(str(tmp_path / "run"))] = str(tmp_path / "run2")
    assert two_stage.main(argv) == 2
    assert "missing.caffemodel" in capsys.readouterr().err


def test_chance_level_is_the_majority_share_plus_three_standard_errors() -> None:
    from pyirg.train import chance_bar, chance_level

    # 5 balanced classes over 400 images: 0.2 + 3 * sqrt(0.2 * 0.8 / 400) = 0.26.
    balanced = [0, 1, 2, 3, 4] * 80
    assert chance_bar(balanced, 5) == pytest.approx(0.26)
    assert "chance level for 5 classes" in chance_level(0.26, balanced, 5)
    assert chance_level(0.261, balanced, 5) is None
    # Half the images of one class: always answering it scores 0.5, which is no result.
    skewed = [0] * 200 + [1, 2, 3, 4] * 50
    assert chance_bar(skewed, 5) == pytest.approx(0.5 + 3 * (0.25 / 400) ** 0.5)
    assert chance_level(0.5, skewed, 5) is not None and chance_level(0.6, skewed, 5) is None
    assert chance_level(0.0, [0] * 10, 1) is None and chance_level(0.1, [], 10) is None


def test_demo_table_flags_a_method_with_runs_at_chance() -> None:
    from pyirg import refilled_demo

    labels = [0, 1, 2, 3, 4] * 80
    rows = [
        {"setting": "cross-task", "method": m, "seed": seed, "accuracy": a}
        for m, accs in (("baseline", (0.85, 0.87)), ("REFILLED", (0.20, 0.83)))
        for seed, a in enumerate(accs)
    ]
    results = {
        "teachers": {"cross-task": {"label": "teacher on digits 0-4", "accuracy": 0.99}},
        "summary": {"cross-task": refilled_demo.summary(rows, "cross-task", (labels, 5))},
        "machine": "Machine: here.",
    }
    table = refilled_demo.format_table(results)
    assert (
        "- **REFILLED: 1 of 2 runs ended at chance level** (test accuracy at most 26.00%" in table
    )
    assert "try a lower --teaching-weight (REFILLED)." in table and "baseline: " not in table


def test_pyirg_refilled_says_when_a_stage_ends_at_chance(tmp_path: Path, capsys) -> None:
    """The authors' lambda of 100 at lr 0.1 makes the digits' stage 2 explode without a
    non-finite loss; the student ends predicting one class, and the command must say so."""
    from pyirg import prepare

    data = tmp_path / "digits"
    assert prepare.main(["digits", str(data), "--quiet"]) == 0
    common = ["--data-dir", str(data), "--batch", "32", "--no-progress"]
    alone = [*common, "--classes", "0", "1", "2", "3", "4", "--student", "resnet-8", "--alone",
             "--stage2-iter", "40", "--out", str(tmp_path / "teacher")]  # fmt: skip
    assert two_stage.main(alone) == 0, capsys.readouterr().err
    capsys.readouterr()
    runs = {}
    for weight in ("100", "10"):
        argv = [
            *common, "--classes", "5", "6", "7", "8", "9", "--teacher", "resnet-8",
            "--teacher-weights", str(tmp_path / "teacher" / "net_iter_40.caffemodel"),
            "--student", "wrn-10-1", "--stage1-iter", "12", "--stage2-iter", "40",
            "--teaching-weight", weight, "--out", str(tmp_path / weight),
        ]  # fmt: skip
        assert two_stage.main(argv) == 0
        record = json.loads((tmp_path / weight / "refilled.json").read_text())
        runs[weight] = (record, capsys.readouterr().err)
    collapsed, err = runs["100"]
    assert collapsed["student_accuracy"] < 0.26  # 5 classes: chance is 0.2
    assert collapsed["warnings"] == [line.removeprefix("refilled: warning: ")
                                     for line in err.splitlines()]  # fmt: skip
    assert "stage 2: accuracy" in err and "lower --teaching-weight" in err
    learned, err = runs["10"]
    assert learned["student_accuracy"] > 0.5 and "warnings" not in learned and not err


@pytest.mark.slow
def test_the_demo_pairs_its_runs_and_reports_them(tmp_path: Path) -> None:
    """A reduced refilled-demo: every (method, seed) run, the paired statistics, the table."""
    from pyirg import refilled_demo

    argv = [
        "--out", str(tmp_path / "demo"), "--seeds", "0", "1", "--settings", "cross-task",
        "--teacher-iter", "16", "--stage1-iter", "8", "--max-iter", "12", "--jobs", "2",
        "--no-progress",
    ]  # fmt: skip
    assert refilled_demo.main(argv) == 0
    results = json.loads((tmp_path / "demo" / "results.json").read_text())
    runs = {(r["method"], r["seed"]) for r in results["runs"]}
    assert runs == {(m, s) for m in ("baseline", "REFILLED") for s in (0, 1)}
    refilled = results["summary"]["cross-task"]["REFILLED"]
    accs = {r["method"]: [] for r in results["runs"]}
    for r in sorted(results["runs"], key=lambda r: r["seed"]):
        accs[r["method"]].append(r["accuracy"])
    diff = np.mean(np.subtract(accs["REFILLED"], accs["baseline"]))
    assert refilled["vs_baseline"]["mean_diff"] == pytest.approx(diff)
    assert 0 <= refilled["ncm_mean"] <= 1
    table = (tmp_path / "demo" / "results.md").read_text()
    assert "| REFILLED |" in table and "Machine:" in table
    # Both students of a seed started from the same weights (the paired design).
    init = tmp_path / "demo" / "cross-task" / "init" / "student_seed0.caffemodel"
    assert init.is_file()
    # Run again into the same folder: every run (teacher, baseline, REFILLED) resumes from
    # its finished snapshot instead of refusing the folder, and the results are the same.
    assert refilled_demo.main(argv) == 0
    again = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert len(again["runs"]) == len(results["runs"])
    assert {(r["method"], r["seed"]): r["accuracy"] for r in again["runs"]} == {
        (r["method"], r["seed"]): r["accuracy"] for r in results["runs"]
    }


def test_a_teacher_of_other_classes_loads_into_the_stage_nets(tmp_path: Path) -> None:
    """Cross-task: the teacher's classifier (other classes) is in no stage net, so its
    weights load by name and every teacher layer of the net is in them."""
    from pyirg.refilled import plain_net
    from pyirg.train.weights import check_weights, net_param_shapes, teacher_layers

    teacher = WideResNetSpec(10, 1, num_classes=5, in_channels=1)
    weights = tmp_path / "teacher.caffemodel"
    caffe_net(plain_net(teacher, DIGITS), "TRAIN").save(str(weights))
    for build in (stage1_net, stage2_net):
        proto = build(RefilledConfig(teacher, STUDENT, DIGITS))
        names = {layer.name for layer in proto.layer}
        assert "fc" not in names and "stu_fc" in names, build.__name__
        shapes = net_param_shapes([caffe_net(proto, "TRAIN")])
        required = [n for n in teacher_layers(shapes, "stu_") if n != CENTER_KD]
        check_weights(shapes, weights, required=required)  # raises on a mismatch
