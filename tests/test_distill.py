"""Tests of the distillation nets (pyirg.distill): topology against the authors' released
prototxts (read from ../shared, not copied), every term combination run in pycaffe, and
the terms' values against numpy written here from the paper's definitions.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("GLOG_minloglevel", "2")
caffe = pytest.importorskip("caffe")
from caffe.proto import caffe_pb2  # noqa: E402
from google.protobuf import text_format  # noqa: E402

from pyirg.arch import cifar_resnet  # noqa: E402
from pyirg.data.core import DATASETS  # noqa: E402
from pyirg.distill import METHOD_WEIGHTS, DistillConfig, distill_net  # noqa: E402
from pyirg.netspec import DataConfig, deploy_net, train_net  # noqa: E402
from pyirg.solver import Schedule, make_solver  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
AUTHORS = Path(__file__).resolve().parents[2] / "shared" / "reference" / "authors_prototxt"
DIGITS_INPUT = DataConfig(kind="input", dataset=DATASETS["digits"], train_batch=6)


def parse(text: str) -> caffe_pb2.NetParameter:
    net = caffe_pb2.NetParameter()
    text_format.Merge(text, net)
    return net


def _phases(rules: list[caffe_pb2.NetStateRule]) -> list[str]:
    return [caffe_pb2.Phase.Name(r.phase) for r in rules]


def describe(layer: caffe_pb2.LayerParameter, data_type: bool = True) -> dict[str, object]:
    """What must match between two files, for one layer (data sources left out)."""
    d: dict[str, object] = {
        "name": layer.name,
        "type": layer.type,
        "bottom": list(layer.bottom),
        "top": list(layer.top),
        "param": [(p.lr_mult, p.decay_mult) for p in layer.param],
        "loss_weight": [round(w, 6) for w in layer.loss_weight],
        "include": _phases(layer.include),
        "exclude": _phases(layer.exclude),
        "irg_param": text_format.MessageToString(layer.irg_param, as_one_line=True),
    }
    bn = layer.batch_norm_param
    if layer.type == "BatchNorm":
        d["use_global_stats"] = bn.use_global_stats if bn.HasField("use_global_stats") else None
    if layer.type in ("Data", "ImageData"):
        if not data_type:
            d["type"] = "(data)"
        param = layer.data_param if layer.type == "Data" else layer.image_data_param
        tp = layer.transform_param
        d["data"] = (param.batch_size, tp.crop_size, tp.mirror)
    for field in ("convolution_param", "pooling_param", "inner_product_param", "scale_param"):
        if layer.HasField(field):
            d[field] = text_format.MessageToString(getattr(layer, field), as_one_line=True)
    if layer.HasField("eltwise_param"):
        d["eltwise_param"] = layer.eltwise_param.operation
    return d


def _authors_trainable(net: caffe_pb2.NetParameter) -> caffe_pb2.NetParameter:
    """The authors' ResNet-20 with the param blocks and BatchNorm settings that they give
    their trainable student (the ``stu_`` twin of each layer in their IRG.prototxt)."""
    student = {la.name: la for la in parse((AUTHORS / "IRG.prototxt").read_text()).layer}
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    for layer in out.layer:
        twin = student.get("stu_" + layer.name)
        if twin is None:
            continue
        del layer.param[:]
        layer.param.extend(twin.param)
        layer.ClearField("batch_norm_param")
        if twin.HasField("batch_norm_param"):
            layer.batch_norm_param.CopyFrom(twin.batch_norm_param)
    return out


# Deliberate differences, all in ResNet-20.prototxt (the teacher trained alone):
# 1. The authors' file is their frozen distillation teacher pasted on its own (every
#    lr_mult 0, BatchNorm use_global_stats true): it can never learn. Ours trains with
#    exactly the param blocks and BatchNorm settings the authors give their trainable
#    student, which is what we compare against (_authors_trainable).
# 2. Their ImageData layers (list files, mean 127.5, scale 1/256) feed the teacher other
#    inputs than the LMDB + mean files of the distillation nets; ours use the same LMDB
#    Data layers as IRG.prototxt, so only the data layer type differs (batch sizes, crop,
#    mirror, phases and tops are compared).
ALLOWED = {"ResNet-20.prototxt": ("trainable", "data layer type")}


@pytest.mark.parametrize(
    "name", ["ResNet-20.prototxt", "IRG.prototxt", "IRG_Transformation.prototxt"]
)
def test_topology_matches_authors(name: str) -> None:
    if not AUTHORS.is_dir():
        pytest.skip(f"{AUTHORS} absent (../shared is not beside this checkout)")
    theirs = parse((AUTHORS / name).read_text())
    if "trainable" in ALLOWED.get(name, ()):
        theirs = _authors_trainable(theirs)
    ours = parse((REPO / "prototxt" / name).read_text())
    data_type = "data layer type" not in ALLOWED.get(name, ())
    assert ours.name == theirs.name
    a = [describe(la, data_type) for la in theirs.layer]
    b = [describe(la, data_type) for la in ours.layer]
    diffs = []
    for i in range(max(len(a), len(b))):
        la, lb = (a[i] if i < len(a) else {}), (b[i] if i < len(b) else {})
        for key in sorted(set(la) | set(lb)):
            if la.get(key) != lb.get(key):
                diffs.append(
                    f"layer {i} {la.get('name')!r}/{lb.get('name')!r} {key}: "
                    f"authors {la.get(key)!r}, ours {lb.get(key)!r}"
                )
    print("\n".join(diffs))
    assert not diffs, f"{len(diffs)} differences from the authors' {name}"


def test_method_weights_agree_with_pytorch_reference() -> None:
    from pyirg.torch.losses import METHODS as TORCH

    for method, weights in TORCH.items():
        ours = {
            f"{k}_weight".replace("edges_", "edge_"): v for k, v in METHOD_WEIGHTS[method].items()
        }
        assert ours == weights, method


TEACHER = cifar_resnet(14, 0.5, in_channels=1)  # 8/16/32 channels


STUDENT = cifar_resnet(14, 0.25, in_channels=1)  # 4/8/16


STUDENT8 = cifar_resnet(8, 0.25, in_channels=1, numbering_depth=14)  # Eltwise1, 3, 5


CASES = {
    "logits": dict(method="logits"),
    "IRG": dict(method="IRG"),
    "IRG-edges-3-layers": dict(method="IRG", edge_layers=("Pooling1", "Eltwise2", "InnerProduct1")),
    "IRG-t": dict(method="IRG-t"),
    "IRG-t-padded": dict(
        method="IRG-t",
        student=STUDENT8,
        student_pairs=(
            ("Eltwise3", "Eltwise1"),
            ("Eltwise5", "Eltwise3"),
            ("Pooling1", "Eltwise1"),
        ),
    ),
    "MTK": dict(method="MTK"),
    "MTK-mean-unsquared-released": dict(
        method="MTK", normalize="MEAN", squared=False, backward="RELEASED", gt=0.5
    ),
    "MTK-none": dict(method="MTK", normalize="NONE"),
}


# The loss layers each case must have, with their weights, by the paper's terms.
EDGE_LOSSES = {"bem_loss": 0.005}


VECTOR_LOSSES = {"bem12_loss": 0.005, "bem34_loss": 0.005, "bem56_loss": 0.005}


EXPECTED_LOSSES = {
    "logits": {"logits_loss": 0.05},
    "IRG": {"logits_loss": 0.05, **EDGE_LOSSES},
    "IRG-edges-3-layers": {
        "logits_loss": 0.05,
        "bem_Pooling1_loss": 0.005,
        "bem_Eltwise2_loss": 0.005,
        "bem_InnerProduct1_loss": 0.005,
    },
    "IRG-t": VECTOR_LOSSES,
    "IRG-t-padded": VECTOR_LOSSES,
    "MTK": {"logits_loss": 0.05, **EDGE_LOSSES, **VECTOR_LOSSES},
    "MTK-mean-unsquared-released": {"logits_loss": 0.05, **EDGE_LOSSES, **VECTOR_LOSSES},
    "MTK-none": {"logits_loss": 0.05, **EDGE_LOSSES, **VECTOR_LOSSES},
}


def case_config(case: str) -> DistillConfig:
    options = dict(CASES[case])
    method = options.pop("method")
    student = options.pop("student", STUDENT)
    return DistillConfig.for_method(method, TEACHER, student, data=DIGITS_INPUT, **options)


def load(net_param: caffe_pb2.NetParameter, phase: int = caffe.TRAIN) -> caffe.Net:
    with tempfile.NamedTemporaryFile("w", suffix=".prototxt") as f:
        f.write(text_format.MessageToString(net_param))
        f.flush()
        return caffe.Net(f.name, phase)


def trained_teacher_stats(net: caffe.Net, net_param: caffe_pb2.NetParameter) -> None:
    """What a loaded teacher brings: BatchNorm statistics mean 0, variance 1 (fresh ones,
    variance 0 under use_global_stats, scale activations by 1/sqrt(eps) per layer)."""
    for layer in net_param.layer:
        if layer.type == "BatchNorm" and layer.batch_norm_param.use_global_stats:
            mean, var, factor = net.params[layer.name]
            mean.data[...], var.data[...], factor.data[...] = 0, 1, 1


def feed(net: caffe.Net, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(net.blobs["Data1"].data.shape).astype(np.float32)
    y = rng.integers(0, 10, net.blobs["Data2"].data.shape)
    net.blobs["Data1"].data[...] = x
    net.blobs["Data2"].data[...] = y
    return x, y


def euclidean_loss(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a.astype(np.float64) - b) ** 2).sum() / (2 * a.shape[0]))


@pytest.mark.parametrize("case", list(CASES))
def test_every_term_combination_runs(case: str) -> None:
    caffe.set_mode_cpu()
    cfg = case_config(case)
    param = distill_net(cfg)
    net = load(param)
    trained_teacher_stats(net, param)
    feed(net)
    out = net.forward()
    net.backward()
    for key, value in out.items():
        assert np.all(np.isfinite(value)), (case, key, value)
    for name, blob in net.params.items():
        for b in blob:
            assert np.all(np.isfinite(b.diff)), (case, name)
    gt = CASES[case].get("gt", 1.0)
    expected = {"stu_SoftmaxWithLoss1": gt, "SoftmaxWithLoss1": 0.0, **EXPECTED_LOSSES[case]}
    weights = {k: v for k, v in net.blob_loss_weights.items() if v or k in expected}
    assert weights == pytest.approx(expected), case
    assert np.abs(net.params["stu_Convolution1"][0].diff).sum() > 0
    if "logits_loss" in expected:
        want = euclidean_loss(net.blobs["InnerProduct1"].data, net.blobs["stu_InnerProduct1"].data)
        assert float(out["logits_loss"]) == pytest.approx(want, rel=1e-4)


def _normalized_map(f: np.ndarray) -> np.ndarray:
    f = f.reshape(f.shape[0], -1).astype(np.float64)
    d = ((f[:, None, :] - f[None, :, :]) ** 2).sum(-1)
    return d / d.max()


def test_edge_term_is_the_distance_between_normalized_graphs() -> None:
    caffe.set_mode_cpu()
    param = distill_net(case_config("IRG"))
    net = load(param)
    trained_teacher_stats(net, param)
    feed(net, seed=1)
    out = net.forward()
    t_map = _normalized_map(net.blobs["Pooling1"].data)
    s_map = _normalized_map(net.blobs["stu_Pooling1"].data)
    np.testing.assert_allclose(net.blobs["bem"].data.reshape(6, 6), t_map, rtol=1e-4, atol=1e-6)
    assert float(out["bem_loss"]) == pytest.approx(euclidean_loss(t_map, s_map), rel=1e-3)


def test_zero_padding_matches_channels_of_a_cross_stage_pair() -> None:
    caffe.set_mode_cpu()
    param = distill_net(case_config("IRG-t-padded"))
    net = load(param)
    feed(net, seed=2)
    net.forward()
    # stu_bem12 compares (Eltwise3: 8 channels, Eltwise1: 4): Eltwise1 gets 4 zeros.
    x = net.blobs["stu_Eltwise3"].data.mean(axis=(2, 3)).astype(np.float64)
    y = net.blobs["stu_Eltwise1"].data.mean(axis=(2, 3)).astype(np.float64)
    padded = net.blobs["stu_bem12_b"].data.reshape(6, -1)
    np.testing.assert_allclose(padded[:, :4], y, rtol=1e-5, atol=1e-6)
    assert np.all(padded[:, 4:] == 0)
    t = ((x - np.pad(y, ((0, 0), (0, 4)))) ** 2).sum(1)
    np.testing.assert_allclose(net.blobs["stu_bem12"].data.ravel(), t / t.max(), rtol=1e-4)


def test_teacher_frozen_after_two_solver_steps(tmp_path: Path) -> None:
    caffe.set_mode_cpu()
    cfg = case_config("MTK")
    param = distill_net(cfg)
    solver_param = make_solver(param, Schedule(stepvalues=(5,), max_iter=10), str(tmp_path / "s"))
    path = tmp_path / "solver.prototxt"
    path.write_text(text_format.MessageToString(solver_param))
    solver = caffe.SGDSolver(str(path))
    trained_teacher_stats(solver.net, param)
    feed(solver.net, seed=3)
    before = {k: [b.data.copy() for b in v] for k, v in solver.net.params.items()}
    solver.step(2)
    teacher = [k for k in before if not k.startswith("stu_")]
    student = [k for k in before if k.startswith("stu_")]
    assert teacher and student
    for name in teacher:
        for old, new in zip(before[name], solver.net.params[name]):
            assert np.array_equal(old, new.data), f"teacher {name} changed"
    changed = [
        n
        for n in student
        if any(not np.array_equal(o, b.data) for o, b in zip(before[n], solver.net.params[n]))
    ]
    assert set(changed) == set(student), set(student) - set(changed)


def test_config_errors_name_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="one block in stage 1"):
        DistillConfig.for_method("IRG-t", TEACHER, STUDENT8, data=DIGITS_INPUT)
    with pytest.raises(ValueError, match="student ResNet-8-x0.25 has no blob 'Eltwise2'"):
        DistillConfig.for_method(
            "IRG-t",
            TEACHER,
            STUDENT8,
            teacher_pairs=(("Eltwise2", "Eltwise1"),),
            data=DIGITS_INPUT,
        )
    with pytest.raises(ValueError, match="'Eltwise9'"):
        DistillConfig.for_method(
            "IRG", TEACHER, STUDENT, edge_layers=("Eltwise9",), data=DIGITS_INPUT
        )
    with pytest.raises(ValueError, match="baseline"):
        DistillConfig.for_method("baseline", TEACHER, STUDENT)
    with pytest.raises(ValueError, match="1-channel input but data set .cifar10. has 3"):
        DistillConfig.for_method("IRG", TEACHER, STUDENT)  # CIFAR data, 1-channel nets
    with pytest.raises(ValueError, match="InnerProduct1"):
        DistillConfig.for_method(
            "IRG-t",
            TEACHER,
            STUDENT,
            teacher_pairs=(("InnerProduct1", "Eltwise1"),),
            data=DIGITS_INPUT,
        )


def test_reduction_pooling_gives_the_same_transformation_terms() -> None:
    """transform_pool='Reduction' is a faster stand-in for the authors' global pooling."""
    teacher = cifar_resnet(14, 0.5, 10, 1)
    student = cifar_resnet(14, 0.25, 10, 1)
    outputs = []
    first: caffe.Net | None = None
    for pool in ("Pooling", "Reduction"):
        cfg = DistillConfig.for_method(
            "IRG-t", teacher, student, data=DIGITS_INPUT, transform_pool=pool
        )
        net_param = distill_net(cfg)
        types = {layer.type for layer in net_param.layer if "pool_eltwise" in layer.name}
        assert types == {pool}
        net = load(net_param)
        trained_teacher_stats(net, net_param)
        if first is None:
            first = net
        else:  # the first net's weights, by layer name
            for name, blobs in first.params.items():
                for src, dst in zip(blobs, net.params[name]):
                    dst.data[...] = src.data
        feed(net)
        out = net.forward()
        outputs.append({k: float(v) for k, v in out.items() if k.startswith("bem")})
    assert outputs[0].keys() == outputs[1].keys() and len(outputs[0]) == 3
    for key in outputs[0]:
        assert outputs[1][key] == pytest.approx(outputs[0][key], rel=1e-5), key
    assert any(v > 0 for v in outputs[0].values())


def test_baseline_and_deploy_nets_share_weights_by_name(tmp_path: Path) -> None:
    caffe.set_mode_cpu()
    cfg = case_config("IRG")
    param = distill_net(cfg)
    net = load(param)
    feed(net)
    net.forward()
    weights = str(tmp_path / "irg.caffemodel")
    net.save(weights)
    deploy = deploy_net(STUDENT, "stu_", batch=6, channels=1, height=8, width=8)
    assert all(not la.param for la in deploy.layer)
    assert not any(la.type.endswith("Loss") for la in deploy.layer)
    with tempfile.NamedTemporaryFile("w", suffix=".prototxt") as f:
        f.write(text_format.MessageToString(deploy))
        f.flush()
        dnet = caffe.Net(f.name, caffe.TEST, weights=weights)
    np.testing.assert_array_equal(
        dnet.params["stu_Convolution1"][0].data, net.params["stu_Convolution1"][0].data
    )
    dnet.blobs["data"].data[...] = net.blobs["Data1"].data
    prob = dnet.forward()["prob"]
    assert prob.shape == (6, 10)
    np.testing.assert_allclose(prob.sum(1), 1, rtol=1e-5)
    baseline = load(train_net(STUDENT, DIGITS_INPUT))
    feed(baseline)
    loss = float(baseline.forward()["SoftmaxWithLoss1"])
    assert math.isfinite(loss) and loss > 0
    assert set(baseline.blob_loss_weights.values()) <= {0.0, 1.0}
