"""Tests of the pre-flight net checker (pyirg.check) on crafted and generated nets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import run_pyirg

os.environ.setdefault("GLOG_minloglevel", "2")
pytest.importorskip("caffe")
from caffe.proto import caffe_pb2
from google.protobuf import text_format

from pyirg.arch import cifar_resnet
from pyirg.check import ERROR, WARNING, Problem, check_net, included, main
from pyirg.data.core import DATASETS
from pyirg.distill import DistillConfig, distill_net
from pyirg.netspec import DataConfig, train_net

REPO = Path(__file__).resolve().parents[1]
TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST
DATA = DataConfig(kind="input", dataset=DATASETS["digits"], train_batch=4)


def layer(
    net: caffe_pb2.NetParameter, name: str, type_: str, bottom=(), top=None, **fields
) -> caffe_pb2.LayerParameter:
    la = net.layer.add(name=name, type=type_, bottom=list(bottom))
    la.top.extend([name] if top is None else list(top))
    for key, value in fields.items():
        if key == "phase":
            la.include.add(phase=value)
        elif key == "n":
            la.input_param.shape.add(dim=[value, 3, 1, 1])
        elif isinstance(value, list):
            getattr(la, key).extend(value)
        else:
            setattr(la, key, value)
    return la


def kinds(problems: list[Problem], severity: str = ERROR) -> dict[str, list[Problem]]:
    out: dict[str, list[Problem]] = {}
    for p in problems:
        if p.severity == severity:
            out.setdefault(p.kind, []).append(p)
    return out


def mtk_net() -> caffe_pb2.NetParameter:
    teacher = cifar_resnet(14, 0.25, in_channels=1)
    student = cifar_resnet(14, 0.25, in_channels=1)
    return distill_net(DistillConfig.for_method("MTK", teacher, student, data=DATA))


def by_name(net: caffe_pb2.NetParameter, name: str) -> caffe_pb2.LayerParameter:
    return next(la for la in net.layer if la.name == name)


# ----------------------------------------------------------------------------- clean nets


@pytest.mark.parametrize(
    "name",
    sorted(
        p.name for p in (REPO / "prototxt").glob("*.prototxt") if not p.name.startswith("solver")
    ),
)
def test_committed_nets_have_no_problems(name: str) -> None:
    net = caffe_pb2.NetParameter()
    text_format.Merge((REPO / "prototxt" / name).read_text(), net)
    assert check_net(net, check_files=False) == []  # data/cifar10 is not prepared here


def test_generated_mtk_and_single_nets_have_no_problems() -> None:
    assert check_net(mtk_net()) == []
    # a single trainable network: nothing is a teacher, nothing needs freezing
    assert check_net(train_net(cifar_resnet(8, 0.25, in_channels=1), DATA)) == []


# ----------------------------------------------------------------------------- each problem


def test_unknown_bottom_and_phase_only_producer() -> None:
    net = caffe_pb2.NetParameter()
    layer(net, "Data1", "Input", top=["Data1"], n=4)
    layer(net, "conv", "Convolution", ["Dat1"])
    layer(net, "pool_train", "Pooling", ["Data1"], phase=TRAIN)
    layer(net, "uses_pool", "ReLU", ["pool_train"])
    layer(net, "early", "ReLU", ["late"], top=["early"])
    layer(net, "late", "ReLU", ["Data1"])
    found = kinds(check_net(net))["unknown-bottom"]
    text = {p.layer: (p.phases, p.message) for p in found}
    assert set(text) == {"conv", "uses_pool", "early"}
    assert text["conv"][0] == ("TRAIN", "TEST") and "'Dat1'" in text["conv"][1]
    assert "did you mean 'Data1'" in text["conv"][1]
    assert text["uses_pool"][0] == ("TEST",) and "only in TRAIN" in text["uses_pool"][1]
    assert "'late'" in text["early"][1] and "later in the file" in text["early"][1]


def test_phase_rules_follow_caffe() -> None:
    la = caffe_pb2.LayerParameter(name="x")
    assert included(la, TRAIN) and included(la, TEST)
    la.exclude.add(phase=TEST)
    assert included(la, TRAIN) and not included(la, TEST)
    la = caffe_pb2.LayerParameter(name="y")
    la.include.add(stage=["deploy"])
    assert not included(la, TRAIN) and included(la, TRAIN, ["deploy"])


def test_teacher_and_student_batches_differ() -> None:
    net = caffe_pb2.NetParameter()
    layer(net, "Data1", "Input", top=["Data1"], n=8)
    layer(net, "stu_data", "Input", top=["stu_data"], n=4)
    layer(net, "Pooling1", "Pooling", ["Data1"])
    layer(net, "stu_Pooling1", "Pooling", ["stu_data"])
    layer(net, "bem", "BatchEuclideanMap", ["Pooling1"])
    layer(net, "stu_bem", "BatchEuclideanMap", ["stu_Pooling1"])
    layer(net, "bem_loss", "EuclideanLoss", ["bem", "stu_bem"], loss_weight=[0.005])
    layer(net, "stu_bemXY", "BatchEuclideanVector", ["stu_Pooling1", "Pooling1"])
    found = kinds(check_net(net))
    assert set(found) == {"batch-mismatch"}, found
    messages = {p.layer: p.message for p in found["batch-mismatch"]}
    assert set(messages) == {"bem_loss", "stu_bemXY"}
    assert "'bem' (teacher, N=8" in messages["bem_loss"]
    assert "'stu_bem' (student, N=4" in messages["bem_loss"]


def test_batch_bookkeeping_follows_data_layers_per_phase() -> None:
    net = caffe_pb2.NetParameter()
    train = layer(net, "Data1", "Data", top=["Data1", "Data2"], phase=TRAIN)
    train.data_param.batch_size = 64
    test = layer(net, "Data1", "Data", top=["Data1", "Data2"], phase=TEST)
    test.data_param.batch_size = 100
    stu = layer(net, "stu_in", "Input", top=["stu_in"])
    stu.input_param.shape.add(dim=[64, 3, 32, 32])
    layer(net, "conv", "Convolution", ["Data1"])
    layer(net, "Pooling1", "Pooling", ["conv"])
    layer(net, "stu_Pooling1", "Pooling", ["stu_in"])
    layer(net, "bem", "BatchEuclideanMap", ["Pooling1"])
    layer(net, "stu_bem", "BatchEuclideanMap", ["stu_Pooling1"])
    layer(net, "bem_loss", "EuclideanLoss", ["bem", "stu_bem"])
    found = kinds(check_net(net))["batch-mismatch"]
    assert [(p.layer, p.phases) for p in found] == [("bem_loss", ("TEST",))]
    assert "N=100" in found[0].message and "N=64" in found[0].message


def test_teacher_not_frozen() -> None:
    net = mtk_net()
    by_name(net, "Convolution2").param[0].lr_mult = 1
    by_name(net, "Scale3").param[1].decay_mult = 1
    del by_name(net, "InnerProduct1").param[:]
    by_name(net, "BatchNorm4").ClearField("batch_norm_param")
    by_name(net, "BatchNorm5").batch_norm_param.use_global_stats = False
    by_name(net, "stu_BatchNorm6").ClearField("batch_norm_param")  # fine for a student
    found = kinds(check_net(net))
    assert set(found) == {"teacher-not-frozen"}
    messages = {p.layer: p.message for p in found["teacher-not-frozen"]}
    assert set(messages) == {"Convolution2", "Scale3", "InnerProduct1", "BatchNorm4", "BatchNorm5"}
    assert "lr_mult 1" in messages["Convolution2"]
    assert "no param block" in messages["InnerProduct1"]
    assert "use_global_stats unset" in messages["BatchNorm4"]
    assert "use_global_stats false" in messages["BatchNorm5"]


def test_teacher_prefix_option() -> None:
    net = caffe_pb2.NetParameter()
    layer(net, "data", "Input", top=["data"], n=2)
    layer(net, "tea_fc", "InnerProduct", ["data"])
    layer(net, "fc", "InnerProduct", ["data"])
    assert check_net(net, teacher_prefix="tea_", student_prefix="") != []
    assert [p.layer for p in check_net(net, teacher_prefix="tea_", student_prefix="")] == ["tea_fc"]
    with pytest.raises(ValueError, match="prefixes must differ"):
        check_net(net, teacher_prefix="", student_prefix="")


def test_loss_weight_on_non_loss_layers() -> None:
    net = mtk_net()
    by_name(net, "stu_InnerProduct1").loss_weight.append(1.0)
    by_name(net, "stu_Pooling1").loss_weight.append(0.0)
    by_name(net, "bem_loss").loss_weight.extend([1.0])  # two weights, one top
    by_name(net, "SoftmaxWithLoss1").ClearField("loss_weight")  # teacher loss weight 1
    problems = check_net(net)
    errors = kinds(problems)
    assert set(errors) == {"loss-weight"}
    messages = {p.layer: p.message for p in errors["loss-weight"]}
    assert set(messages) == {"stu_InnerProduct1", "stu_Pooling1", "bem_loss"}
    assert "not a loss" in messages["stu_InnerProduct1"]
    assert "2 loss_weight values for 1 top" in messages["bem_loss"]
    warnings = kinds(problems, WARNING)
    assert [p.layer for p in warnings["teacher-loss"]] == ["SoftmaxWithLoss1"]


def test_irg_layer_bottom_counts() -> None:
    net = caffe_pb2.NetParameter()
    layer(net, "d", "Input", top=["a", "b"], n=4)
    layer(net, "map2", "BatchEuclideanMap", ["a", "b"])
    layer(net, "vec1", "BatchEuclideanVector", ["a"])
    layer(net, "vec_in_place", "BatchEuclideanVector", ["a", "b"], top=["a"])
    layer(net, "map_ok", "BatchEuclideanMap", ["b"])
    found = kinds(check_net(net))
    # vec_in_place also overwrites 'a', which map2 and vec1 read: Caffe aborts on that too
    assert set(found) == {"irg-bottoms", "in-place-shared"}
    assert [p.layer for p in found["in-place-shared"]] == ["vec_in_place"]
    messages = {p.layer: p.message for p in found["irg-bottoms"]}
    assert set(messages) == {"map2", "vec1", "vec_in_place"}
    assert "exactly one bottom" in messages["map2"] and "'a', 'b'" in messages["map2"]
    assert "exactly two bottoms" in messages["vec1"]
    assert "in place" in messages["vec_in_place"]


def test_duplicate_top_and_batchnorm_lr() -> None:
    net = caffe_pb2.NetParameter()
    layer(net, "d", "Input", top=["x"], n=4)
    layer(net, "c1", "Convolution", ["x"], top=["y"])
    layer(net, "c2", "Convolution", ["x"], top=["y"])
    bn = layer(net, "bn", "BatchNorm", ["y"], top=["y"])
    bn.param.add(lr_mult=1)
    found = kinds(check_net(net))
    assert [p.layer for p in found["duplicate-top"]] == ["c2"]
    assert [p.layer for p in found["bn-param"]] == ["bn"]


# ----------------------------------------------------------------------------- CLI


def test_cli_exit_status_and_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.prototxt"
    good.write_text(text_format.MessageToString(mtk_net()))
    assert main([str(good)]) == 0
    net = mtk_net()
    by_name(net, "Convolution1").param[0].lr_mult = 1
    by_name(net, "bem_loss").bottom[1] = "stu_bme"
    bad = tmp_path / "bad.prototxt"
    bad.write_text(text_format.MessageToString(net))
    capsys.readouterr()
    assert main([str(bad), "--student-prefix", "stu_"]) == 1
    out = capsys.readouterr().out
    assert "teacher-not-frozen" in out and "'Convolution1'" in out
    assert "unknown-bottom" in out and "'stu_bme'" in out and "did you mean 'stu_bem'" in out
    assert "2 error(s)" in out
    broken = tmp_path / "broken.prototxt"
    broken.write_text("layer { name: 'x' typo: 1 }")
    assert main([str(broken)]) == 1


# ------------------------------------------------------------- what Caffe would train wrong


def _irg_net(n: int = 8) -> caffe_pb2.NetParameter:
    net = caffe_pb2.NetParameter()
    layer(net, "x", "Input", n=n)
    layer(net, "stu_x", "Input", n=n)
    layer(net, "bem", "BatchEuclideanMap", ["x"])
    layer(net, "stu_bem", "BatchEuclideanMap", ["stu_x"])
    layer(net, "bem_loss", "EuclideanLoss", ["bem", "stu_bem"])
    return net


def test_clean_irg_net() -> None:
    assert check_net(_irg_net()) == []


def test_in_place_layer_on_an_irg_top() -> None:
    net = _irg_net()
    relu = layer(net, "relu_on_map", "ReLU", ["stu_bem"], top=["stu_bem"])
    net.layer.remove(relu)
    net.layer.insert(4, relu)  # before the loss, in place on the student's map
    found = kinds(check_net(net))["irg-in-place"]
    assert [p.layer for p in found] == ["relu_on_map"]
    assert "'stu_bem'" in found[0].message and "gradients" in found[0].message


def test_irg_layer_fed_one_instance() -> None:
    found = kinds(check_net(_irg_net(n=1)))["irg-batch-1"]
    assert {p.layer for p in found} == {"bem", "stu_bem"}


def test_irg_map_fed_more_than_a_blob_holds() -> None:
    # 46,341 x 46,341 passes the 2^31 - 1 entries of a blob; 46,340 fits.
    found = kinds(check_net(_irg_net(n=46341)))["irg-batch-too-large"]
    assert {p.layer for p in found} == {"bem", "stu_bem"}
    assert "N=46341" in found[0].message and "N <= 46340" in found[0].message
    assert "irg-batch-too-large" not in kinds(check_net(_irg_net(n=46340)))
    net = caffe_pb2.NetParameter()
    layer(net, "x", "Input", n=50000)
    layer(net, "t", "Input", n=50000)
    layer(net, "y", "Input", n=50000)
    layer(net, "triplet", "TripletRelationLoss", ["x", "t", "y"])
    found = kinds(check_net(net))["irg-batch-too-large"]
    assert [p.layer for p in found] == ["triplet"]


def test_logits_of_different_class_counts() -> None:
    net = caffe_pb2.NetParameter()
    layer(net, "x", "Input", n=4)
    teacher = layer(net, "InnerProduct1", "InnerProduct", ["x"])
    teacher.inner_product_param.num_output = 10
    student = layer(net, "stu_InnerProduct1", "InnerProduct", ["x"])
    student.inner_product_param.num_output = 5
    layer(net, "logits_loss", "EuclideanLoss", ["InnerProduct1", "stu_InnerProduct1"])
    found = kinds(check_net(net))["class-mismatch"]
    assert "(10 outputs)" in found[0].message and "(5 outputs)" in found[0].message


def test_n_changed_by_concat_and_slice_along_axis_0() -> None:
    net = _irg_net()
    cat = layer(net, "cat", "Concat", ["x", "x"])
    cat.concat_param.axis = 0  # 16 instances
    half = layer(net, "half", "Slice", ["x"], top=["half_a", "half_b"])
    half.slice_param.axis = 0
    half.slice_param.slice_point.append(3)  # 3 and 5 instances
    layer(net, "cat_bem", "BatchEuclideanMap", ["cat"])
    layer(net, "half_bem", "BatchEuclideanMap", ["half_b"])
    layer(net, "mixed", "EuclideanLoss", ["cat_bem", "stu_bem"])
    layer(net, "mixed2", "BatchEuclideanVector", ["half_a", "half_b"], top=["v"])
    found = kinds(check_net(net))["batch-mismatch"]
    messages = {p.layer: p.message for p in found}
    assert "N=16" in messages["mixed"] and "N=8" in messages["mixed"]
    assert "N=3" in messages["mixed2"] and "N=5" in messages["mixed2"]


def test_missing_data_source_and_mean_file(tmp_path: Path) -> None:
    net = caffe_pb2.NetParameter()
    data = layer(net, "Data1", "Data", top=["Data1", "Data2"])
    data.data_param.source = str(tmp_path / "no_such_lmdb")
    data.data_param.batch_size = 4
    data.transform_param.mean_file = str(tmp_path / "mean.binaryproto")
    found = kinds(check_net(net))["missing-file"]
    assert len(found) == 2 and "no_such_lmdb" in found[0].message
    assert check_net(net, check_files=False) == []
    (tmp_path / "no_such_lmdb").mkdir()
    (tmp_path / "mean.binaryproto").write_bytes(b"")
    assert check_net(net) == []


def test_in_place_layer_on_a_blob_another_layer_reads() -> None:
    """Caffe splits a shared blob; an in-place layer on it then becomes a second producer."""
    net = _irg_net()
    layer(net, "drop", "Dropout", ["stu_x"], top=["stu_x"])  # after stu_bem read stu_x
    found = kinds(check_net(net))["in-place-shared"]
    assert [p.layer for p in found] == ["drop"] and "'stu_bem'" in found[0].message
    # in place before anyone else reads it (Conv -> BatchNorm -> ReLU) is fine
    ok = _irg_net()
    relu = layer(ok, "relu", "ReLU", ["x"], top=["x"])
    ok.layer.remove(relu)
    ok.layer.insert(2, relu)
    assert "in-place-shared" not in kinds(check_net(ok))


def test_vector_layer_bottoms_of_different_per_instance_size() -> None:
    net = caffe_pb2.NetParameter()
    a = layer(net, "a", "Input", top=["a"])
    a.input_param.shape.add(dim=[8, 16, 4, 4])
    b = layer(net, "b", "Input", top=["b"])
    b.input_param.shape.add(dim=[8, 32, 2, 2])
    pa = layer(net, "pa", "Pooling", ["a"])
    pa.pooling_param.global_pooling = True
    pb = layer(net, "pb", "Pooling", ["b"])
    pb.pooling_param.global_pooling = True
    layer(net, "bev", "BatchEuclideanVector", ["pa", "pb"], top=["v"])
    found = kinds(check_net(net))["vector-size"]
    assert "'pa' (16 per instance)" in found[0].message and "(32 per instance)" in found[0].message
    # the generated nets zero-pad the narrower side (Power, Slice, Concat): no error
    assert "vector-size" not in kinds(check_net(mtk_net()))


def test_batch_of_one_vector_layer_that_still_trains_is_not_flagged() -> None:
    net = caffe_pb2.NetParameter()
    layer(net, "x", "Input", n=1)
    layer(net, "y", "Input", n=1)
    v = layer(net, "bev", "BatchEuclideanVector", ["x", "y"], top=["v"])
    assert "irg-batch-1" in kinds(check_net(net))  # normalized: always 1, gradient 0
    v.irg_param.normalize = caffe_pb2.IRGParameter.NONE  # t = |x - y|: it trains
    assert "irg-batch-1" not in kinds(check_net(net))


def test_empty_net_and_unknown_layer_type_are_errors() -> None:
    assert [p.kind for p in check_net(caffe_pb2.NetParameter())] == ["empty-net"]
    net = caffe_pb2.NetParameter()
    net.layer.add(name="x", type="Input", top=["x"]).input_param.shape.add(dim=[4, 3])
    net.layer.add(name="bem", type="BatchEuclidMap", bottom=["x"], top=["bem"])
    found = [p for p in check_net(net) if p.kind == "unknown-type"]
    assert len(found) == 1 and "'BatchEuclideanMap'" in found[0].message  # the close match


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


def test_a_fifo_net_is_refused_not_waited_on(tmp_path: Path) -> None:
    fifo = tmp_path / "net.prototxt"
    os.mkfifo(fifo)
    proc = run_pyirg("check", str(fifo), timeout=60)
    assert proc.returncode != 0 and "not a regular file" in proc.stdout + proc.stderr


def test_a_test_pass_that_wraps_or_stops_short_of_its_lmdb_is_named(tmp_path: Path) -> None:
    """Caffe's test accuracy averages test_iter batches, wrapping around the LMDB: 8 x 100
    on the digits' 797 test images counts 3 of them twice."""
    import numpy as np

    from pyirg.check import lmdb_test_coverage
    from pyirg.data.writer import write_datum_lmdb

    source = tmp_path / "test_lmdb"
    write_datum_lmdb(source, np.zeros((10, 1, 2, 2), np.uint8), np.zeros(10, np.int64))
    net = caffe_pb2.NetParameter()
    train = net.layer.add(name="train_data", type="Data", include=[{"phase": caffe_pb2.TRAIN}])
    train.data_param.source, train.data_param.batch_size = str(source), 3
    test = net.layer.add(name="test_data", type="Data", include=[{"phase": caffe_pb2.TEST}])
    test.data_param.source, test.data_param.batch_size = str(source), 4
    test.data_param.backend = train.data_param.backend = caffe_pb2.DataParameter.LMDB
    (twice,) = lmdb_test_coverage(net, 3)
    assert (
        "test_iter 3 x batch_size 4 = 12 images" in twice and "holds 10: 2 counted twice" in twice
    )
    (short,) = lmdb_test_coverage(net, 2)
    assert "holds 10: 2 never tested" in short and "test_data" in short
    test.data_param.batch_size = 5
    assert (
        lmdb_test_coverage(net, 2) == []
    )  # exactly once: nothing to say (the TRAIN layer is not read)
