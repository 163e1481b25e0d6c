"""Write a :class:`DataSplit` in the layout Caffe's Data layers expect.

Output directory (written as a whole into a temporary directory beside it and
renamed at the end, so a failure never leaves a half-written LMDB)::

    train_lmdb/           Datum (C x H x W uint8, label), keys 00000000, 00000001, ...
    test_lmdb/
    mean.binaryproto      per-pixel train mean, BlobProto 1 x C x H x W (compute_image_mean)
    train_pad_lmdb/       train images zero-padded by ``pad`` pixels (C x H+2p x W+2p)
    mean_pad.binaryproto  per-pixel mean of the padded train images
    labels.txt            class names, one per line, in label order
    info.json             counts, shapes, padding, source
    *.npy                 (optional) the arrays, for Input-fed nets

Why the padded copy: the authors' IRG.prototxt trains from padded images with
``crop_size: 32`` and ``mean_file: mean_pad.binaryproto`` (random 32x32 crops of
40x40 CIFAR images, i.e. random shifts of up to 4 pixels), and tests on the
unpadded images with ``mean.binaryproto``.  Caffe subtracts the mean at the
uncropped pixel position, so the padded mean must come from the padded images
(it is the unpadded mean with a zero border).

Keys are zero-padded decimal indices, as Caffe's convert tools write them, so
the Data layer reads the images in the order of the split.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import lmdb
import numpy as np
from tqdm import tqdm

from pyirg.caffeio import blob_proto, caffe_proto, write_binary
from pyirg.data.core import DATASETS, DataError, DataSplit
from pyirg.data.feed import pad_images, pixel_mean
from pyirg.data.fsutil import atomic_directory

_KEY_DIGITS = 8
_TXN_CHUNK = 1000
NPY_FILES = ("train_images", "train_labels", "test_images", "test_labels")


def _map_size(n: int, item_bytes: int) -> int:
    # Values over ~2 KB go to LMDB overflow pages: count whole 4 KiB pages per
    # record plus one for the tree, and double it for headroom.
    pages = math.ceil((item_bytes + 64) / 4096) + 1
    return 2 * n * pages * 4096 + (1 << 24)


def write_datum_lmdb(
    path: str | Path,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    progress: bool = False,
    desc: str | None = None,
) -> None:
    """Write uint8 (N, C, H, W) images and labels as caffe Datum records into a new LMDB."""
    pb = caffe_proto()
    n, c, h, w = images.shape
    env = lmdb.open(str(path), map_size=_map_size(n, c * h * w), subdir=True, meminit=True)
    try:
        with tqdm(total=n, desc=desc, unit="img", disable=not progress, leave=False) as bar:
            for start in range(0, n, _TXN_CHUNK):
                stop = min(n, start + _TXN_CHUNK)
                with env.begin(write=True) as txn:
                    for i in range(start, stop):
                        datum = pb.Datum(
                            channels=c,
                            height=h,
                            width=w,
                            data=images[i].tobytes(),
                            label=int(labels[i]),
                        )
                        txn.put(f"{i:0{_KEY_DIGITS}d}".encode(), datum.SerializeToString())
                bar.update(stop - start)
        env.sync(True)
    finally:
        env.close()


def read_datum_lmdb(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a Datum LMDB back as uint8 (N, C, H, W) images and int64 labels, in key order."""
    pb = caffe_proto()
    images: list[np.ndarray] = []
    labels: list[int] = []
    env = lmdb.open(str(path), readonly=True, lock=False, subdir=True)
    try:
        with env.begin() as txn:
            for _, value in txn.cursor():
                datum = pb.Datum.FromString(value)
                shape = (datum.channels, datum.height, datum.width)
                images.append(np.frombuffer(datum.data, dtype=np.uint8).reshape(shape))
                labels.append(datum.label)
    finally:
        env.close()
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def write_mean_binaryproto(path: str | Path, mean: np.ndarray) -> None:
    """Write a (C, H, W) mean as compute_image_mean does: BlobProto with legacy 1xCxHxW dims."""
    write_binary(path, blob_proto(mean, legacy=True))


def write_dataset(
    split: DataSplit,
    out_dir: str | Path,
    *,
    pad: int,
    write_npy: bool = False,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Write ``split`` into ``out_dir`` (layout in the module docstring); return the path."""
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    out = Path(out_dir)
    if overwrite and out.is_dir() and any(out.iterdir()) and not (out / "info.json").is_file():
        raise DataError(f"--overwrite: {out} was not written by prepare-data (no info.json)")
    with atomic_directory(out, overwrite=overwrite) as tmp:
        files: list[str] = []

        def write_lmdb(name: str, images: np.ndarray, labels: np.ndarray, part: str) -> None:
            desc = f"{split.name} {part}"
            write_datum_lmdb(tmp / name, images, labels, progress=progress, desc=desc)
            files.append(name)

        def write_mean(name: str, images: np.ndarray) -> None:
            write_mean_binaryproto(tmp / name, pixel_mean(images))
            files.append(name)

        write_lmdb("train_lmdb", split.train_images, split.train_labels, "train")
        write_lmdb("test_lmdb", split.test_images, split.test_labels, "test")
        write_mean("mean.binaryproto", split.train_images)
        if pad:
            padded = pad_images(split.train_images, pad)
            write_lmdb("train_pad_lmdb", padded, split.train_labels, "train (padded)")
            write_mean("mean_pad.binaryproto", padded)
        if write_npy:
            for name in NPY_FILES:
                np.save(tmp / f"{name}.npy", getattr(split, name))
                files.append(f"{name}.npy")
        (tmp / "labels.txt").write_text("".join(f"{n}\n" for n in split.label_names))
        info = {
            "name": split.name,
            "num_classes": split.num_classes,
            "image_shape": list(split.image_shape),
            "train_count": len(split.train_labels),
            "test_count": len(split.test_labels),
            "pad": pad,
            "scale": DATASETS[split.name].scale if split.name in DATASETS else 1.0,
            "files": files + ["labels.txt"],
        }
        (tmp / "info.json").write_text(json.dumps(info, indent=2) + "\n")
    return out


def read_npy_split(data_dir: str | Path) -> DataSplit:
    """Load the ``*.npy`` arrays a prepared directory holds (written with ``write_npy``)."""
    root = Path(data_dir)
    missing = [f"{n}.npy" for n in NPY_FILES if not (root / f"{n}.npy").is_file()]
    if missing:
        raise DataError(f"{root}: missing {', '.join(missing)} (prepare it with npy output)")
    arrays = {n: np.load(root / f"{n}.npy", allow_pickle=False) for n in NPY_FILES}
    names_file = root / "labels.txt"
    if names_file.is_file():
        names = tuple(names_file.read_text().splitlines())
    else:
        names = tuple(str(i) for i in range(int(arrays["train_labels"].max()) + 1))
    return DataSplit(name=root.name, label_names=names, **arrays)
