"""The authors' IRG prototxts load unchanged with our layers and train.

Only their Data layers (LMDB files we do not have) are replaced by Input
layers of the same shapes; every other layer, including BatchEuclideanMap and
BatchEuclideanVector with their released parameters, is theirs as released.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest

caffe = pytest.importorskip("caffe")
from caffe.proto import caffe_pb2  # noqa: E402
from google.protobuf import text_format  # noqa: E402


def _with_inputs(path: Path, batch: int) -> tuple[str, caffe_pb2.NetParameter]:
    net = caffe_pb2.NetParameter()
    text_format.Merge(path.read_text(), net)
    kept = [layer for layer in net.layer if layer.type not in ("Data", "ImageData")]
    data = next(layer for layer in net.layer if layer.type in ("Data", "ImageData"))
    crop = data.transform_param.crop_size or 32
    del net.layer[:]
    inp = net.layer.add(name=data.name, type="Input", top=list(data.top))
    inp.input_param.shape.add(dim=[batch, 3, crop, crop])
    inp.input_param.shape.add(dim=[batch])
    net.layer.extend(kept)
    return text_format.MessageToString(net), net


@pytest.mark.parametrize(
    "name, irg_type",
    [
        ("IRG.prototxt", "BatchEuclideanMap"),
        ("IRG_Transformation.prototxt", "BatchEuclideanVector"),
    ],
)
def test_authors_net_runs_forward_backward(
    authors_prototxt: Path, name: str, irg_type: str
) -> None:
    caffe.set_mode_cpu()
    text, param = _with_inputs(authors_prototxt / name, batch=16)
    irg_layers = [layer.name for layer in param.layer if layer.type == irg_type]
    assert len(irg_layers) >= 2, "the file should use our layer type for teacher and student"
    with tempfile.NamedTemporaryFile("w", suffix=".prototxt") as f:
        f.write(text)
        f.flush()
        net = caffe.Net(f.name, caffe.TRAIN)
    # A trained teacher brings its BatchNorm statistics; fresh ones (variance 0
    # under use_global_stats) would blow activations up by 1/sqrt(eps) a layer.
    for layer in param.layer:
        if layer.type == "BatchNorm" and layer.batch_norm_param.use_global_stats:
            net.params[layer.name][1].data[...] = 1
            net.params[layer.name][2].data[...] = 1
    rng = np.random.default_rng(0)
    net.blobs["Data1"].data[...] = rng.standard_normal(net.blobs["Data1"].data.shape)
    net.blobs["Data2"].data[...] = rng.integers(0, 10, net.blobs["Data2"].data.shape)
    out = net.forward()
    net.backward()
    for key, value in out.items():
        assert np.all(np.isfinite(value)), key
    irg_losses = [k for k in out if k.startswith("bem")]
    assert irg_losses and all(float(out[k]) > 0 for k in irg_losses), out
    student_grad = net.params["stu_Convolution1"][0].diff
    assert np.all(np.isfinite(student_grad)) and np.abs(student_grad).sum() > 0
    for layer in irg_layers:
        top = net.blobs[layer].data
        assert np.all(np.isfinite(top)) and top.max() == pytest.approx(1.0)  # MAX normalizer
