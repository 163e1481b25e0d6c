"""tools/export_onnx.py: a student's deploy prototxt + caffemodel -> checked ONNX file."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch

from pyirg.caffeio import write_binary

caffe = pytest.importorskip("caffe")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from caffe.proto import caffe_pb2  # noqa: E402
from conftest import REPO, run  # noqa: E402
from google.protobuf import text_format  # noqa: E402

from pyirg import export  # noqa: E402
from pyirg.arch import cifar_resnet  # noqa: E402
from pyirg.netspec import deploy_net  # noqa: E402
from pyirg.torch.caffemodel import (  # noqa: E402
    caffe_layers_from_model,
    net_parameter_from_layers,
    save_caffemodel,
)
from pyirg.torch.resnet import CifarResNet  # noqa: E402

#: ResNet-14 x0.25 numbered as ResNet-20 (gaps in the numbering), as a distilled student.
SPEC = cifar_resnet(14, 0.25, numbering_depth=20)


def trained_ish(spec=SPEC, seed: int = 0) -> CifarResNet:
    """Random weights with non-trivial BatchNorm statistics, scales and biases."""
    g = torch.Generator().manual_seed(seed)
    model = CifarResNet(spec).eval()
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) * 1.5 + 0.25)
            elif name.endswith("running_mean") or name.endswith("bias"):
                t.copy_(torch.randn(t.shape, generator=g) * 0.2)
            elif name.endswith(".weight") and t.dim() == 1:
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
    return model


@pytest.fixture()
def student(tmp_path):
    """(deploy prototxt, caffemodel, model) of a stu_-prefixed student."""
    model = trained_ish()
    deploy = tmp_path / "student_deploy.prototxt"
    deploy.write_text(text_format.MessageToString(deploy_net(SPEC, "stu_", batch=2)))
    weights = tmp_path / "student.caffemodel"
    save_caffemodel(model, weights, prefix="stu_")
    return deploy, weights, model


def test_export_passes_checker_and_matches_caffe(student, tmp_path, capsys) -> None:
    deploy, weights, model = student
    out = tmp_path / "student.onnx"
    assert (
        export.main([str(deploy), str(weights), str(out), "--prefix", "stu_", "--batch", "3"]) == 0
    )
    report = capsys.readouterr().out
    assert "ResNet-14-x0.25" in report and "PASS" in report
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto, full_check=True)
    assert max(op.version for op in proto.opset_import if op.domain in ("", "ai.onnx")) >= 17
    # Independently of the tool: ONNX Runtime vs the PyTorch model, another batch size
    # (batch and image size are dynamic) and another image size (global pooling).
    x = np.random.default_rng(5).standard_normal((5, 3, 16, 16)).astype(np.float32)
    logits, prob = ort.InferenceSession(str(out)).run(None, {"data": x})
    expected = model(torch.from_numpy(x)).detach().numpy()
    assert np.abs(logits - expected).max() <= 1e-4
    assert np.abs(prob - torch.softmax(torch.from_numpy(expected), 1).numpy()).max() <= 1e-5


def test_export_of_given_batch_through_the_wrapper(student, tmp_path) -> None:
    deploy, weights, _ = student
    batch = tmp_path / "batch.npy"
    np.save(batch, np.random.default_rng(1).uniform(-2, 2, (4, 3, 32, 32)).astype(np.float32))
    out = tmp_path / "student.onnx"
    proc = run(
        [sys.executable, str(REPO / "tools/export_onnx.py"), str(deploy), str(weights),
         str(out), "--input", str(batch), "--depth", "14", "--width", "0.25"]
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "batch 4x3x32x32" in proc.stdout and out.exists()


def test_a_wrong_export_fails_loudly(student, tmp_path, monkeypatch, capsys) -> None:
    deploy, weights, _ = student
    original = export.run_onnx

    def off_by_a_bit(path, x):
        logits, prob = original(path, x)
        return [logits + 1e-3 * max(1.0, float(abs(logits).max())), prob]  # 1e-3 relative

    monkeypatch.setattr(export, "run_onnx", off_by_a_bit)
    assert export.main([str(deploy), str(weights), str(tmp_path / "x.onnx")]) == 1
    assert "FAIL: ONNX and Caffe differ" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()  # a file that does not match is not kept


def test_tolerance_is_relative_to_the_outputs_size(student, tmp_path, monkeypatch) -> None:
    """Float32 logits of thousands differ by a few 1e-4 absolute yet agree to 1e-7."""
    deploy, weights, _ = student
    original = export.run_onnx

    def rounding_of_large_logits(path, x):
        logits, prob = original(path, x)
        return [logits * (1 + 5e-7), prob]

    monkeypatch.setattr(export, "run_onnx", rounding_of_large_logits)
    assert export.main([str(deploy), str(weights), str(tmp_path / "x.onnx")]) == 0
    for bad in ("nan", "inf", "-1", "0"):
        args = export.build_parser().parse_args(
            [str(deploy), str(weights), "o.onnx", "--atol", bad]
        )
        with pytest.raises(export.ExportError, match="--atol"):
            export.run(args)


def _error(capsys, *argv: str) -> str:
    assert export.main(list(argv)) == 2
    err = capsys.readouterr().err
    assert err.startswith("export_onnx: error: ") and "Traceback" not in err
    return err


def test_caffemodel_missing_a_layer(student, tmp_path, capsys) -> None:
    deploy, _, model = student
    layers = caffe_layers_from_model(model, "stu_")
    del layers["stu_Scale6"]
    weights = tmp_path / "missing.caffemodel"
    write_binary(weights, net_parameter_from_layers(layers))
    err = _error(capsys, str(deploy), str(weights), str(tmp_path / "x.onnx"))
    assert "stu_Scale6" in err


def test_caffemodel_of_another_width(student, tmp_path, capsys) -> None:
    deploy, _, _ = student
    weights = tmp_path / "wide.caffemodel"
    save_caffemodel(trained_ish(cifar_resnet(14, 0.5, numbering_depth=20)), weights, "stu_")
    err = _error(capsys, str(deploy), str(weights), str(tmp_path / "x.onnx"))
    assert "'stu_Convolution1' blob 0" in err and "(8, 3, 3, 3)" in err and "(4, 3, 3, 3)" in err
    assert not (tmp_path / "x.onnx").exists()


def _edit_deploy(deploy, tmp_path, edit) -> str:
    net = caffe_pb2.NetParameter()
    text_format.Merge(deploy.read_text(), net)
    edit(net)
    path = tmp_path / "edited.prototxt"
    path.write_text(text_format.MessageToString(net))
    return str(path)


def test_unconvertible_layer_type(student, tmp_path, capsys) -> None:
    deploy, weights, _ = student

    def prelu(net) -> None:
        next(layer for layer in net.layer if layer.name == "stu_ReLU3").type = "PReLU"

    edited = _edit_deploy(deploy, tmp_path, prelu)
    err = _error(capsys, edited, str(weights), str(tmp_path / "x.onnx"))
    assert "'stu_ReLU3' has type 'PReLU'" in err and "cannot convert" in err


def test_prototxt_that_is_not_the_resnet(student, tmp_path, capsys) -> None:
    deploy, weights, _ = student

    def stride(net) -> None:
        conv = next(layer for layer in net.layer if layer.name == "stu_Convolution6")
        conv.convolution_param.stride[:] = [2]

    edited = _edit_deploy(deploy, tmp_path, stride)
    err = _error(capsys, edited, str(weights), str(tmp_path / "x.onnx"))
    assert "'stu_Convolution6'" in err and "parameters" in err and "+ stride: 2" in err

    err = _error(capsys, str(deploy), str(weights), str(tmp_path / "x.onnx"), "--prefix", "t_")
    assert "--prefix 't_'" in err and "stu_Convolution1" in err


def test_fifo_inputs_are_refused_not_waited_on(student, tmp_path, capsys) -> None:
    deploy, weights, _ = student
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert "not a regular file" in _error(capsys, str(fifo), str(weights), str(tmp_path / "x.onnx"))
    assert "not a regular file" in _error(capsys, str(deploy), str(fifo), str(tmp_path / "x.onnx"))


def test_an_output_path_without_a_file_to_write_is_named(student, tmp_path, capsys) -> None:
    """Before the export: an errno alone named neither the path nor the fix."""
    deploy, weights, _ = student
    err = _error(capsys, str(deploy), str(weights), str(tmp_path / "none" / "s.onnx"))
    assert f"has no folder {tmp_path / 'none'}" in err
    err = _error(capsys, str(deploy), str(weights), str(tmp_path))
    assert f"output {tmp_path} is a folder" in err
