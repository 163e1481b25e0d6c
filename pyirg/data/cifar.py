"""CIFAR-10/100 from the official Python-pickle archives, read without trusting them.

The archives (``cifar-10-python.tar.gz``, ``cifar-100-python.tar.gz``) hold
Python 2 pickles.  Unpickling can run arbitrary code, so the batches are loaded
with :class:`SafeUnpickler`, which admits only the globals the real files
reference: numpy's array reconstruction (``numpy.core.multiarray._reconstruct``,
spelled ``numpy._core`` by numpy 2), ``numpy.ndarray`` and ``numpy.dtype``.
Everything else in those files (dicts, lists, byte strings, ints) is built by
pickle opcodes without any global lookup.  They are loaded with
``encoding="bytes"`` because the image data are Python 2 ``str`` objects.

Python 3 writes ``bytes`` into a protocol-2 pickle as ``_codecs.encode(text,
"latin1")``, so that global is admitted too, as a function that only encodes text as
latin-1 (nothing else can be called through it).

The archive is read as one stream, never extracted (so member paths cannot escape
anywhere), and to its end (:mod:`pyirg.data.archive`: a flipped byte is an error). An
already-extracted directory is accepted too; FIFOs, devices and sockets are refused.
"""

from __future__ import annotations

import io
import pickle
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from pyirg.data.archive import member_data, tar_stream
from pyirg.data.core import DATASETS, DataError, DataSplit


@dataclass(frozen=True)
class CifarVariant:
    """Member names of one official archive."""

    directory: str
    train_members: tuple[str, ...]
    test_member: str
    meta_member: str


CIFAR_VARIANTS: dict[str, CifarVariant] = {
    "cifar10": CifarVariant(
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        "test_batch",
        "batches.meta",
    ),
    "cifar100": CifarVariant("cifar-100-python", ("train",), "test", "meta"),
}

#: (label key in the batches, label-name key in the meta file, number of classes)
_LABELS: dict[tuple[str, str], tuple[str, str, int]] = {
    ("cifar10", "fine"): ("labels", "label_names", 10),
    ("cifar100", "fine"): ("fine_labels", "fine_label_names", 100),
    ("cifar100", "coarse"): ("coarse_labels", "coarse_label_names", 20),
}

CIFAR_IMAGE_SHAPE = DATASETS["cifar10"].image_shape


class UnsafePickleError(DataError):
    """A pickle referenced a global that CIFAR batches never need."""


def _numpy_reconstruct() -> Callable[..., Any]:
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """What protocol-2 pickles of ``bytes`` call: text -> latin-1 bytes, nothing else."""
    if not isinstance(text, str) or encoding.replace("-", "").lower() != "latin1":
        raise UnsafePickleError(f"_codecs.encode only as latin-1 text, got {encoding!r}")
    return text.encode("latin-1")


_ALLOWED_GLOBALS: dict[tuple[str, str], Callable[[], Any]] = {
    ("_codecs", "encode"): lambda: _latin1_encode,
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
}


class SafeUnpickler(pickle.Unpickler):
    """An Unpickler that resolves only numpy array reconstruction globals.

    ``source`` names the file being read, for the error message.
    """

    def __init__(self, file: io.BufferedIOBase | io.BytesIO, *, source: str) -> None:
        super().__init__(file, encoding="bytes")
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        factory = _ALLOWED_GLOBALS.get((module, name))
        if factory is None:
            raise UnsafePickleError(
                f"{self._source}: refusing to unpickle global '{module}.{name}' "
                "(a CIFAR batch only needs numpy arrays, lists, dicts and strings)"
            )
        return factory()


def safe_unpickle(data: bytes, source: str) -> dict[str, Any]:
    """Unpickle one CIFAR member into a dict with ``str`` keys."""
    try:
        obj = SafeUnpickler(io.BytesIO(data), source=source).load()
    except DataError:
        raise
    except Exception as e:  # a corrupt pickle can raise almost any exception type
        raise DataError(f"{source}: not a valid CIFAR pickle ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict):
        raise DataError(f"{source}: expected a pickled dict, got {type(obj).__name__}")
    return {(k.decode("latin-1") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}


#: How a path that is neither a directory nor a regular file is named in messages.
_PATH_KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a device",
    stat.S_IFBLK: "a device",
    stat.S_IFSOCK: "a socket",
}


def _read_members(path: Path, variant: CifarVariant) -> dict[str, bytes]:
    """Return the raw bytes of every member ``variant`` needs, from a tar or a directory."""
    wanted = (*variant.train_members, variant.test_member, variant.meta_member)
    found: dict[str, bytes] = {}
    if path.is_dir():
        for name in wanted:
            for candidate in (path / name, path / variant.directory / name):
                if candidate.is_file():
                    found[name] = candidate.read_bytes()
                    break
    elif path.is_file():
        with tar_stream(path) as tar:
            for member in tar:
                parts = PurePosixPath(member.name).parts
                if not member.isfile() or not 1 <= len(parts) <= 2 or parts[-1] not in wanted:
                    continue
                name = parts[-1]
                if name in found:
                    raise DataError(f"{path}: member '{name}' occurs twice")
                found[name] = member_data(tar, member)
    elif path.exists():
        kind = _PATH_KINDS.get(stat.S_IFMT(path.stat().st_mode), "not a regular file")
        raise DataError(f"{path}: is {kind}; give the archive file or its extracted folder")
    else:
        raise DataError(f"{path}: no such file or directory")
    missing = [n for n in wanted if n not in found]
    if missing:
        raise DataError(
            f"{path}: missing member(s) {', '.join(missing)} (expected under {variant.directory}/)"
        )
    return found


def _batch_arrays(
    batch: dict[str, Any], source: str, label_key: str, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    data = batch.get("data")
    n_pixels = int(np.prod(CIFAR_IMAGE_SHAPE))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{source}: 'data' must be a uint8 array (N, {n_pixels}), got {got}")
    if data.shape[1] != n_pixels or data.shape[0] == 0:
        raise DataError(f"{source}: 'data' must have shape (N>0, {n_pixels}), got {data.shape}")
    if label_key not in batch:
        raise DataError(f"{source}: no '{label_key}' entry")
    labels = np.asarray(batch[label_key])
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) != len(data):
        raise DataError(
            f"{source}: '{label_key}' must be {len(data)} integers, "
            f"got {labels.dtype} {labels.shape}"
        )
    if labels.min() < 0 or labels.max() >= num_classes:
        raise DataError(
            f"{source}: '{label_key}' outside [0, {num_classes}) "
            f"(min {labels.min()}, max {labels.max()})"
        )
    return data.reshape((-1, *CIFAR_IMAGE_SHAPE)), labels.astype(np.int64)


def load_cifar(path: str | Path, variant: str = "cifar10", *, labels: str = "fine") -> DataSplit:
    """Read an official CIFAR Python archive (``.tar.gz``) or its extracted directory.

    ``labels`` selects CIFAR-100's ``fine`` (100 classes) or ``coarse`` (20
    superclasses) labels; CIFAR-10 has only ``fine``.
    """
    if variant not in CIFAR_VARIANTS:
        raise ValueError(f"unknown CIFAR variant {variant!r}; one of {sorted(CIFAR_VARIANTS)}")
    if (variant, labels) not in _LABELS:
        raise ValueError(f"{variant} has no {labels!r} labels")
    spec = CIFAR_VARIANTS[variant]
    label_key, names_key, num_classes = _LABELS[(variant, labels)]
    path = Path(path)
    raw = _read_members(path, spec)

    def load(name: str) -> dict[str, Any]:
        return safe_unpickle(raw.pop(name), f"{path}:{name}")

    def batch(name: str) -> tuple[np.ndarray, np.ndarray]:
        return _batch_arrays(load(name), f"{path}:{name}", label_key, num_classes)

    parts = [batch(m) for m in spec.train_members]
    test_images, test_labels = batch(spec.test_member)
    names = load(spec.meta_member).get(names_key)
    if not isinstance(names, list) or len(names) != num_classes:
        raise DataError(f"{path}:{spec.meta_member}: '{names_key}' must list {num_classes} names")
    label_names = tuple(n.decode("latin-1") if isinstance(n, bytes) else str(n) for n in names)
    return DataSplit(
        name=variant if variant == "cifar10" else f"{variant}-{labels}",
        train_images=np.concatenate([p[0] for p in parts]),
        train_labels=np.concatenate([p[1] for p in parts]),
        test_images=test_images,
        test_labels=test_labels,
        label_names=label_names,
    )
