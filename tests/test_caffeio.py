"""Tests of Caffe's files from Python (pyirg.caffeio): every bad file is a message naming
it, and the legacy blob-shape rule is the one Caffe itself applies."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("caffe")
from caffe.proto import caffe_pb2

from pyirg.caffeio import (
    CaffeFileError,
    blob_array,
    blob_fits,
    blob_proto,
    blob_shape,
    caffe_net,
    read_binary,
    read_net,
    read_solver,
    write_binary,
    write_text,
)

NET = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 2 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y"
        inner_product_param { num_output: 3 } }
"""


def test_text_files_are_read_or_refused_naming_the_file(tmp_path: Path) -> None:
    good = tmp_path / "net.prototxt"
    good.write_text(NET)
    assert [la.name for la in read_net(good).layer] == ["x", "ip"]
    bad = tmp_path / "bad.prototxt"
    bad.write_text("layer { name: ")
    with pytest.raises(CaffeFileError, match=r"bad\.prototxt: not a valid NetParameter"):
        read_net(bad)
    binary = tmp_path / "model.caffemodel"
    binary.write_bytes(b"\x0a\x04name\xa2\x06\xff\xfe\xfd")
    with pytest.raises(CaffeFileError, match=r"model\.caffemodel: not a text SolverParameter"):
        read_solver(binary)
    with pytest.raises(ValueError, match="no such file"):
        read_net(tmp_path / "missing.prototxt")
    fifo = tmp_path / "fifo.prototxt"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not a regular file"):
        read_net(fifo)  # reading it would block forever


def test_a_v1_net_is_refused_where_asked(tmp_path: Path) -> None:
    v1 = tmp_path / "v1.prototxt"
    v1.write_text('layers { name: "ip" type: INNER_PRODUCT }')
    assert len(read_net(v1).layers) == 1
    with pytest.raises(CaffeFileError, match="V1 'layers' field"):
        read_net(v1, v1=False)


def test_binary_files_are_read_or_refused_naming_the_file(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.caffemodel"
    garbage.write_bytes(b"\xff\xff\xff\xff")
    with pytest.raises(CaffeFileError, match=r"garbage\.caffemodel: not a binary"):
        read_binary(garbage)
    empty = tmp_path / "empty.caffemodel"
    write_binary(empty, caffe_pb2.NetParameter(name="x"))
    with pytest.raises(CaffeFileError, match="holds no layers"):
        read_binary(empty)
    assert not list(tmp_path.glob(".*tmp*"))  # written atomically, nothing left behind


def test_blob_shapes_and_values_in_both_forms() -> None:
    legacy = blob_proto(np.arange(6, dtype=np.float32).reshape(1, 2, 3), legacy=True)
    assert blob_shape(legacy) == ((1, 1, 2, 3), True)
    modern = blob_proto(np.ones((3, 2), np.float32))
    assert blob_shape(modern) == ((3, 2), False)
    assert blob_array(legacy, "x").shape == (1, 1, 2, 3)
    np.testing.assert_array_equal(blob_array(legacy, "x").ravel(), np.arange(6))
    short = caffe_pb2.BlobProto()
    short.shape.dim.extend([2, 2])
    short.data.extend([1.0, 2.0, 3.0])
    with pytest.raises(CaffeFileError, match=r"layer 'ip' blob 0: shape \(2, 2\) needs 4"):
        blob_array(short, "layer 'ip' blob 0")


_COPY = r"""
import sys
import caffe
from caffe.proto import caffe_pb2
net_file, num, channels, height, width, weights = sys.argv[1:]
model = caffe_pb2.NetParameter()
layer = model.layer.add(name="ip", type="InnerProduct")
w = layer.blobs.add(num=int(num), channels=int(channels), height=int(height), width=int(width))
w.data.extend([0.5] * 6)
b = layer.blobs.add()
b.shape.dim.append(3)
b.data.extend([0.0] * 3)
open(weights, "wb").write(model.SerializeToString())
caffe.Net(net_file, caffe.TEST, weights=weights)
print("copied")
"""


@pytest.mark.parametrize("legacy", [(1, 1, 3, 2), (1, 3, 1, 2), (3, 2, 1, 1)])
def test_the_legacy_shape_rule_is_caffes(legacy: tuple[int, ...], tmp_path: Path) -> None:
    """blob_fits says yes exactly where Caffe's copy_from accepts the blob (else it aborts)."""
    net = tmp_path / "net.prototxt"
    net.write_text(NET)
    proc = subprocess.run(
        [sys.executable, "-c", _COPY, str(net), *map(str, legacy), str(tmp_path / "w")],
        capture_output=True,
        text=True,
    )
    copied = proc.returncode == 0 and "copied" in proc.stdout
    assert copied == blob_fits(legacy, True, (3, 2)), proc.stderr[-1500:]
    assert not blob_fits(legacy, False, (3, 2))  # a shaped blob must match exactly


def test_a_net_from_a_message_with_weights(tmp_path: Path) -> None:
    path = tmp_path / "net.prototxt"
    path.write_text(NET)
    net_param = read_net(path)
    weights = tmp_path / "w.caffemodel"
    first = caffe_net(net_param, "TEST")
    first.params["ip"][0].data[...] = 0.25
    first.save(str(weights))
    second = caffe_net(net_param, "TEST", weights)
    np.testing.assert_array_equal(second.params["ip"][0].data, 0.25)
    write_text(tmp_path / "copy.prototxt", net_param, "# header\n")
    text = (tmp_path / "copy.prototxt").read_text()
    assert text.startswith("# header\n") and read_net(tmp_path / "copy.prototxt") == net_param
