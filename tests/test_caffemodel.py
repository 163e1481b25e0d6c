"""Weights between .caffemodel / pycaffe and CifarResNet (pyirg.torch.caffemodel).

The decisive checks run the same weights through Caffe and PyTorch and compare outputs;
the BatchNorm scale-factor rule is checked on hand-made blobs with hand-divided values.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pyirg.caffeio import write_binary

caffe = pytest.importorskip("caffe")
from caffe.proto import caffe_pb2  # noqa: E402

from pyirg.arch import cifar_resnet  # noqa: E402
from pyirg.netspec import deploy_net  # noqa: E402
from pyirg.torch.caffemodel import (  # noqa: E402
    caffe_layers_from_model,
    layers_from_pycaffe,
    load_caffe_weights,
    net_parameter_from_layers,
    read_caffemodel,
    save_caffemodel,
    state_dict_from_caffe,
)
from pyirg.torch.resnet import CifarResNet  # noqa: E402

SPEC = cifar_resnet(8, 0.25)


def randomized(spec=SPEC, seed: int = 0) -> CifarResNet:
    """A model whose every tensor differs from its initial value (biases, scales, stats)."""
    g = torch.Generator().manual_seed(seed)
    model = CifarResNet(spec).eval()
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif t.is_floating_point() and t.dim() > 0:
                t.copy_(torch.randn(t.shape, generator=g) * 0.3)
    return model


def caffe_net(spec, weights: str, prefix: str = "", size: int = 8, batch: int = 2):
    path = weights + ".prototxt"
    with open(path, "w") as f:
        f.write(str(deploy_net(spec, prefix, batch=batch, height=size, width=size)))
    return caffe.Net(path, weights, caffe.TEST)


def test_round_trip_through_a_caffemodel_file(tmp_path) -> None:
    model = randomized()
    path = tmp_path / "m.caffemodel"
    save_caffemodel(model, path, prefix="stu_")
    layers = read_caffemodel(path)
    assert all(name.startswith("stu_") for name in layers)
    assert layers["stu_BatchNorm2"].type == "BatchNorm"
    assert layers["stu_BatchNorm2"].blobs[2].tolist() == [1.0]
    assert layers["stu_InnerProduct1"].blobs[0].shape == (10, 16)
    back = load_caffe_weights(CifarResNet(SPEC), path, prefix="stu_")
    for key, value in model.state_dict().items():
        if key.endswith(("caffe_factor", "num_batches_tracked")):
            continue
        assert torch.equal(back.state_dict()[key], value), key


def test_caffe_runs_the_saved_weights_like_pytorch(tmp_path) -> None:
    model = randomized(seed=1)
    path = str(tmp_path / "m.caffemodel")
    save_caffemodel(model, path, prefix="stu_")
    net = caffe_net(SPEC, path, "stu_")
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    net.blobs["data"].data[...] = x
    net.forward()
    expected = model(torch.from_numpy(x)).detach().numpy()
    assert (
        np.abs(net.blobs["stu_InnerProduct1"].data - expected).max() < 1e-4 * np.abs(expected).max()
    )


def test_pycaffe_weights_with_scale_factor_load_into_pytorch(tmp_path) -> None:
    """Weights set in pycaffe (BatchNorm factor 2.5), saved by Caffe itself, read back."""
    path = str(tmp_path / "init.caffemodel")
    save_caffemodel(CifarResNet(SPEC), path)
    net = caffe_net(SPEC, path)
    rng = np.random.default_rng(3)
    for name, blobs in net.params.items():
        if net.layer_dict[name].type == "BatchNorm":
            c = blobs[0].data.shape[0]
            blobs[0].data[...] = 2.5 * rng.standard_normal(c)
            blobs[1].data[...] = 2.5 * rng.uniform(0.5, 2.0, c)
            blobs[2].data[...] = 2.5
        else:
            for blob in blobs:
                blob.data[...] = 0.3 * rng.standard_normal(blob.data.shape)
    saved = str(tmp_path / "saved.caffemodel")
    net.save(saved)
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    net.blobs["data"].data[...] = x
    net.forward()
    for source in (saved, layers_from_pycaffe(net)):
        model = load_caffe_weights(CifarResNet(SPEC).eval(), source)
        assert float(model.layers["BatchNorm1"].caffe_factor) == 2.5
        out = model(torch.from_numpy(x)).detach().numpy()
        ref = net.blobs["InnerProduct1"].data
        assert np.abs(out - ref).max() < 1e-4 * np.abs(ref).max()


def _net_with(layers: dict[str, tuple[str, list[np.ndarray]]]) -> caffe_pb2.NetParameter:
    from pyirg.torch.caffemodel import CaffeLayer

    return net_parameter_from_layers({n: CaffeLayer(n, t, b) for n, (t, b) in layers.items()})


def _replace(model: CifarResNet, prefix: str = "", **changes) -> caffe_pb2.NetParameter:
    layers = caffe_layers_from_model(model, prefix)
    for name, value in changes.items():
        if value is None:
            del layers[name]
        else:
            layers[name] = value
    return net_parameter_from_layers(layers)


def test_batchnorm_blobs_are_divided_by_the_factor() -> None:
    model = CifarResNet(SPEC)
    bn = caffe_layers_from_model(model)["BatchNorm1"]
    c = bn.blobs[0].shape[0]
    bn.blobs = [np.arange(c, dtype=np.float32) * 2, np.full(c, 6.0, np.float32), np.array([2.0])]
    state = state_dict_from_caffe(_replace(model, BatchNorm1=bn), model)
    assert state["layers.BatchNorm1.running_mean"].tolist() == list(range(c))
    assert state["layers.BatchNorm1.running_var"].tolist() == [3.0] * c
    assert float(state["layers.BatchNorm1.caffe_factor"]) == 2.0
    bn.blobs[2] = np.array([0.0], np.float32)  # Caffe: factor 0 -> statistics 0
    state = state_dict_from_caffe(_replace(model, BatchNorm1=bn), model)
    assert state["layers.BatchNorm1.running_mean"].abs().max() == 0
    assert state["layers.BatchNorm1.running_var"].abs().max() == 0


def test_legacy_four_d_blob_shapes_are_accepted() -> None:
    model = randomized()
    fc = caffe_layers_from_model(model)["InnerProduct1"]
    weight = fc.blobs[0]
    fc.blobs = [weight.reshape(1, 1, *weight.shape), fc.blobs[1].reshape(1, 1, 1, -1)]
    state = state_dict_from_caffe(_replace(model, InnerProduct1=fc), model)
    assert np.array_equal(state["layers.InnerProduct1.weight"].numpy(), weight)


def test_distillation_snapshot_keeps_teacher_and_student_apart() -> None:
    teacher, student = randomized(cifar_resnet(8, 0.5), 1), randomized(SPEC, 2)
    layers = caffe_layers_from_model(teacher)
    layers.update(caffe_layers_from_model(student, "stu_"))
    net = net_parameter_from_layers(layers)
    t = load_caffe_weights(CifarResNet(cifar_resnet(8, 0.5)), net)
    s = load_caffe_weights(CifarResNet(SPEC), net, prefix="stu_")
    assert torch.equal(t.layers["Convolution2"].weight, teacher.layers["Convolution2"].weight)
    assert torch.equal(s.layers["Convolution2"].weight, student.layers["Convolution2"].weight)


def test_missing_layer_is_named() -> None:
    model = CifarResNet(SPEC)
    with pytest.raises(ValueError, match=r"no blobs for layer\(s\) stu_Scale3 "):
        state_dict_from_caffe(_replace(model, "stu_", stu_Scale3=None), model, "stu_")


def test_shape_mismatch_names_layer_and_shapes() -> None:
    wide = caffe_layers_from_model(CifarResNet(cifar_resnet(8, 0.5)))
    net = net_parameter_from_layers(wide)
    with pytest.raises(ValueError, match=r"'Convolution1' blob 0.*\(8, 3, 3, 3\).*\(4, 3, 3, 3\)"):
        state_dict_from_caffe(net, CifarResNet(SPEC))


def test_wrong_type_and_blob_count_and_extra_layers_are_errors() -> None:
    model = CifarResNet(SPEC)
    conv = caffe_layers_from_model(model)["Convolution1"]
    deconv = net_parameter_from_layers(
        {
            **caffe_layers_from_model(model),
            "Convolution1": type(conv)(conv.name, "Deconvolution", conv.blobs),
        }
    )
    with pytest.raises(ValueError, match=r"'Convolution1' is a Deconvolution.*cannot convert"):
        state_dict_from_caffe(deconv, model)
    conv.blobs = conv.blobs[:1]
    with pytest.raises(ValueError, match=r"'Convolution1' \(Convolution\) has 1 blobs, expected 2"):
        state_dict_from_caffe(_replace(model, Convolution1=conv), model)
    layers = caffe_layers_from_model(model, "stu_")
    extra = _net_with({"stu_PReLU1": ("PReLU", [np.ones(4, np.float32)])})
    extra.layer.extend(net_parameter_from_layers(layers).layer)
    with pytest.raises(ValueError, match=r"'stu_PReLU1' \(PReLU\).*cannot convert"):
        state_dict_from_caffe(extra, model, "stu_")


def test_not_a_caffemodel_is_an_error(tmp_path) -> None:
    bad = tmp_path / "bad.caffemodel"
    bad.write_bytes(b"\xff\xff\xff not protobuf")
    with pytest.raises(ValueError, match="bad.caffemodel"):
        read_caffemodel(bad)
    empty = tmp_path / "empty.caffemodel"
    write_binary(empty, caffe_pb2.NetParameter(name="x"))
    with pytest.raises(ValueError, match="holds no layers"):
        read_caffemodel(empty)
