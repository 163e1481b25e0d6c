"""Names every module of the driver shares: type aliases, the student prefix, pycaffe."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any, Union

import numpy as np

from pyirg.train.errors import TrainError

DEFAULT_STUDENT_PREFIX = "stu_"

BatchFn = Callable[[int], Mapping[str, np.ndarray]]
PathLike = Union[str, os.PathLike]


def import_caffe() -> Any:
    """pycaffe, imported late so that the driver's pure parts load without a Caffe build."""
    try:
        import caffe
    except ImportError as e:  # pragma: no cover - environment problem
        raise TrainError(f"pycaffe is not importable ({e}); source tools/env.sh first") from e
    return caffe


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


def caffe_pb2() -> Any:
    """Caffe's protobuf module (``caffe.proto.caffe_pb2``), imported late like pycaffe."""
    return import_caffe().proto.caffe_pb2
