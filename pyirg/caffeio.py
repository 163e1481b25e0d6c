"""Caffe's files and nets from Python: the one home for reading and writing them.

Why one module: Caffe aborts the process (a ``CHECK``) on a file it cannot parse and
silently misreads some it can (a legacy 4-axis blob, a V1 net); every command that hands
Caffe a prototxt or a .caffemodel reads it here first, so a bad file is a
:class:`CaffeFileError` naming the file, the layer and the shapes, worded the same
everywhere. pycaffe is imported late, so the modules that only generate text load
without a Caffe build.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from pyirg.data.fsutil import atomic_output, atomic_write_text, regular_file

PathLike = str | os.PathLike
Message = TypeVar("Message")


class CaffeFileError(ValueError):
    """A prototxt, .caffemodel or blob that Caffe would abort on or misread."""


def import_caffe() -> Any:
    """pycaffe, or an ImportError that says how to get it."""
    try:
        import caffe
    except ImportError as e:  # pragma: no cover - environment problem
        raise ImportError(f"pycaffe is not importable ({e}); source tools/env.sh first") from e
    return caffe


def caffe_proto() -> Any:
    """Caffe's protobuf module (``caffe.proto.caffe_pb2``), imported late like pycaffe."""
    return import_caffe().proto.caffe_pb2


def caffe_has_cuda() -> bool:
    """Whether the loaded libcaffe was built with CUDA (it links libcudart); a CPU_ONLY
    build aborts the process on ``set_mode_gpu`` ("Cannot use GPU in CPU-only Caffe")."""
    from pyirg.blas import libcaffe_dependencies

    import_caffe()
    with open("/proc/self/maps") as f:
        maps = f.read()
    if "libcudart" in maps or "libcublas" in maps:
        return True
    ldd = libcaffe_dependencies()
    return ldd is None or "libcudart" in ldd  # None: cannot tell, let Caffe decide


# ----------------------------------------------------------------------------- text


def read_text(path: PathLike, message: Message, what: str) -> Message:
    """Merge the text proto at ``path`` into ``message``; every failure names the file."""
    from google.protobuf import text_format

    try:
        text = regular_file(path, what, CaffeFileError).read_text()
    except UnicodeDecodeError as e:
        raise CaffeFileError(f"{path}: not a text {what} (a binary .caffemodel?): {e}") from e
    except OSError as e:
        raise CaffeFileError(f"{path}: cannot read {what}: {e}") from e
    try:
        text_format.Merge(text, message)
    except text_format.ParseError as e:
        raise CaffeFileError(f"{path}: not a valid {what}: {e}") from e
    return message


def read_net(path: PathLike, *, v1: bool = True) -> Any:
    """A NetParameter prototxt; ``v1=False`` refuses the pre-2015 ``layers`` field."""
    net = read_text(path, caffe_proto().NetParameter(), "NetParameter")
    if not v1 and len(net.layers):
        raise CaffeFileError(
            f"{path} uses the V1 'layers' field; upgrade it with upgrade_net_proto_text"
        )
    return net


def read_solver(path: PathLike) -> Any:
    """A SolverParameter prototxt."""
    return read_text(path, caffe_proto().SolverParameter(), "SolverParameter")


def to_text(message: Any, *, as_one_line: bool = False) -> str:
    """A message as the text Caffe reads."""
    from google.protobuf import text_format

    return text_format.MessageToString(message, as_one_line=as_one_line)


def write_text(path: PathLike, message: Any, header: str = "") -> None:
    """Write ``message`` as a prototxt (atomically), after an optional comment ``header``."""
    atomic_write_text(Path(path), header + to_text(message))


# ----------------------------------------------------------------------------- binary


def read_binary(path: PathLike, what: str = "caffemodel") -> Any:
    """A binary NetParameter (.caffemodel); one that is not, or holds no layers, is refused."""
    path = Path(path)
    data = regular_file(path, what).read_bytes()
    net = caffe_proto().NetParameter()
    try:
        net.ParseFromString(data)
    except Exception as e:  # protobuf's DecodeError differs between implementations
        raise CaffeFileError(f"{path}: not a binary Caffe NetParameter ({what}): {e}") from None
    if not net.layer and not net.layers:
        raise CaffeFileError(f"{path} holds no layers: is it a trained {what}?")
    return net


def write_binary(path: PathLike, message: Any) -> None:
    """Write a message in Caffe's binary form (.caffemodel, .binaryproto), atomically."""
    with atomic_output(path) as tmp:
        tmp.write_bytes(message.SerializeToString())


def all_layers(net: Any) -> list[Any]:
    """The layers of a NetParameter, V2 ``layer`` and legacy V1 ``layers`` alike."""
    return [*net.layer, *net.layers]


# ----------------------------------------------------------------------------- blobs


def blob_shape(blob: Any) -> tuple[tuple[int, ...], bool]:
    """A BlobProto's shape, and whether it is the legacy num/channels/height/width form."""
    if blob.HasField("shape"):
        return tuple(int(d) for d in blob.shape.dim), False
    return (blob.num, blob.channels, blob.height, blob.width), True


def blob_fits(shape: tuple[int, ...], legacy: bool, target: Iterable[int]) -> bool:
    """Whether Caffe copies a blob of ``shape`` into one of ``target`` (``Blob::ShapeEquals``):
    a legacy 4-axis shape matches the target padded with leading 1s to 4 axes."""
    target = tuple(target)
    if not legacy:
        return shape == target
    return len(target) <= 4 and shape == (1,) * (4 - len(target)) + target


def blob_array(blob: Any, where: str) -> np.ndarray:
    """A BlobProto's values as float32 in its own shape; a count mismatch names ``where``."""
    shape, _ = blob_shape(blob)
    values = blob.double_data if len(blob.double_data) else blob.data
    expected = int(np.prod(shape)) if shape else 1
    if len(values) != expected:
        raise CaffeFileError(
            f"{where}: shape {shape} needs {expected} values but the blob holds {len(values)}"
        )
    return np.asarray(values, dtype=np.float32).reshape(shape)


def blob_proto(array: np.ndarray, *, legacy: bool = False) -> Any:
    """A float BlobProto of ``array``; ``legacy`` writes the 1xCxHxW form of a (C, H, W)
    array, as Caffe's compute_image_mean does for mean files."""
    pb = caffe_proto()
    if legacy:
        c, h, w = array.shape
        blob = pb.BlobProto(num=1, channels=c, height=h, width=w)
    else:
        blob = pb.BlobProto()
        blob.shape.dim.extend(array.shape)
    blob.data.extend(np.asarray(array, dtype=np.float32).ravel().tolist())
    return blob


# ----------------------------------------------------------------------------- nets


def filler_weights(net_param: Any, seed: int, path: PathLike) -> Path:
    """The weights ``net_param``'s fillers draw under Caffe seed ``seed``, saved once to
    ``path`` (kept if it exists; written atomically, so a kill never leaves a truncated
    file that a later run would start from)."""
    path = Path(path)
    if path.is_file():
        return path
    import_caffe().set_random_seed(seed)
    net = caffe_net(net_param, "TRAIN")
    with atomic_output(path) as tmp:
        net.save(str(tmp))
    return path


def caffe_net(net_param: Any, phase: str = "TEST", weights: PathLike | None = None) -> Any:
    """A pycaffe Net built from a NetParameter (pycaffe only reads files), with weights."""
    caffe = import_caffe()
    fd, path = tempfile.mkstemp(suffix=".prototxt")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(to_text(net_param))
        if weights is None:
            return caffe.Net(path, getattr(caffe, phase))
        return caffe.Net(path, getattr(caffe, phase), weights=str(weights))
    finally:
        os.unlink(path)
