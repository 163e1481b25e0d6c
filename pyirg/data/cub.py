"""CUB-200-2011 from the official ``CUB_200_2011.tgz`` (or its extracted folder), read
without trusting it.

The files used, under ``CUB_200_2011/``::

    images.txt              <id> <path under images/>
    image_class_labels.txt  <id> <class, 1..200>
    train_test_split.txt    <id> <1 = train, 0 = test>
    classes.txt             <class> <name>
    images/<class dir>/<file>.jpg

Why a fixed-size centre crop: a prepared folder holds one uint8 array per split (N x 3 x
size x size, for Input-fed nets), so every image must come out at one size.  Each is
converted to RGB (a few CUB images are grey-level), its shorter side resized to ``size``
(Pillow's bilinear resize, which antialiases when it shrinks) and its centre ``size`` x
``size`` square kept.  The authors' random-resized crops of the whole image at training
time are therefore not reproduced: training sees this one crop, randomly mirrored.  EXIF
orientation is not applied (torchvision's image loader ignores it too).

Nothing in the input is trusted: the four text files must agree on the image ids, classes
lie in 1..200 and are named in ``classes.txt``, image paths stay inside ``images/`` (no
absolute paths, no ``..``), every listed image is a regular file that Pillow decodes
completely.  Each refusal is a one-line :class:`DataError` naming the file.  The archive
is read as one stream (never extracted, so no member can be written anywhere) and to its
end, so that gzip's CRC is checked (:mod:`pyirg.data.archive`); its images are decoded
as they stream by, so memory holds the fixed-size crops (about 1.8 GB at 224), never the
whole archive.  In an extracted folder FIFOs and devices are refused, and so is a
symbolic link that leads out of ``images/``.
"""

from __future__ import annotations

import io
import re
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from tqdm import tqdm

from pyirg.data.archive import MEMBER_KINDS, member_data, tar_stream
from pyirg.data.core import DATASETS, DataError, DataSplit
from pyirg.data.fsutil import regular_file

CUB_DIRECTORY = "CUB_200_2011"
IMAGES_FILE = "images.txt"
LABELS_FILE = "image_class_labels.txt"
SPLIT_FILE = "train_test_split.txt"
CLASSES_FILE = "classes.txt"
METADATA_FILES = (IMAGES_FILE, LABELS_FILE, SPLIT_FILE, CLASSES_FILE)
CUB_NUM_CLASSES = DATASETS["cub200"].num_classes
CUB_SIZE = DATASETS["cub200"].size

_NUMBER = re.compile(r"[0-9]+")  # int() would also take "+1", "1_0" and non-ASCII digits


@dataclass(frozen=True)
class CubMetadata:
    """The four text files, checked against each other; images in id order."""

    paths: tuple[str, ...]  # relative to images/
    labels: np.ndarray  # int64, 0-based
    is_train: np.ndarray  # bool
    label_names: tuple[str, ...]


def _table(data: bytes, source: str, value: str) -> dict[int, tuple[int, str]]:
    """``<number> <value>`` lines -> {number: (line number, value)}."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{source}: not UTF-8 text (byte {e.start})") from e
    table: dict[int, tuple[int, str]] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split(maxsplit=1)
        if len(fields) != 2 or not _NUMBER.fullmatch(fields[0]):
            raise DataError(f"{source}:{n}: expected '<id> <{value}>', got {line.strip()[:80]!r}")
        key = int(fields[0])
        if key in table:
            raise DataError(f"{source}:{n}: id {key} occurs twice (first on line {table[key][0]})")
        table[key] = (n, fields[1].strip())
    if not table:
        raise DataError(f"{source}: no entries")
    return table


def _same_ids(
    table: dict[int, tuple[int, str]], ids: dict[int, tuple[int, str]], source: str
) -> None:
    extra = sorted(set(table) - set(ids))
    if extra:
        raise DataError(f"{source}:{table[extra[0]][0]}: id {extra[0]} is not in {IMAGES_FILE}")
    missing = sorted(set(ids) - set(table))
    if missing:
        raise DataError(f"{source}: no entry for id {missing[0]} of {IMAGES_FILE}")


def _image_path(path: str, where: str) -> str:
    """``path`` if it stays inside images/; the escape is refused, not normalised away."""
    pure = PurePosixPath(path)
    if pure.is_absolute() or ".." in pure.parts or "\\" in path or not pure.parts:
        raise DataError(f"{where}: image path {path!r} leads outside images/")
    return "/".join(pure.parts)


def _class_of(value: str, where: str, classes: dict[int, tuple[int, str]]) -> int:
    """An image's class, 1..200, named in classes.txt."""
    if not _NUMBER.fullmatch(value):
        raise DataError(f"{where}: class {value!r} is not a number")
    c = int(value)
    if not 1 <= c <= CUB_NUM_CLASSES:
        raise DataError(f"{where}: class {c} outside 1..{CUB_NUM_CLASSES}")
    if c not in classes:
        raise DataError(f"{where}: class {c} is not in {CLASSES_FILE}")
    return c


def parse_metadata(raw: dict[str, bytes], source: Callable[[str], str]) -> CubMetadata:
    """Check the four files (``raw``: name -> bytes) against each other.

    ``source(name)`` is how a file is named in messages (the archive member or the path).
    """
    images = _table(raw[IMAGES_FILE], source(IMAGES_FILE), "relative path")
    labels = _table(raw[LABELS_FILE], source(LABELS_FILE), "class")
    split = _table(raw[SPLIT_FILE], source(SPLIT_FILE), "1 train | 0 test")
    classes = _table(raw[CLASSES_FILE], source(CLASSES_FILE), "name")
    for table, name in ((labels, LABELS_FILE), (split, SPLIT_FILE)):
        _same_ids(table, images, source(name))

    out_of_range = [c for c in sorted(classes) if not 1 <= c <= CUB_NUM_CLASSES]
    if out_of_range:
        c = out_of_range[0]
        raise DataError(
            f"{source(CLASSES_FILE)}:{classes[c][0]}: class {c} outside 1..{CUB_NUM_CLASSES}"
        )
    gaps = sorted(set(range(1, max(classes) + 1)) - set(classes))
    if gaps:
        raise DataError(f"{source(CLASSES_FILE)}: classes must be 1..K, class {gaps[0]} is missing")

    first: dict[str, int] = {}  # image path -> its id, in id order
    label_list: list[int] = []
    train_list: list[bool] = []
    for i in sorted(images):
        line, path = images[i]
        where = f"{source(IMAGES_FILE)}:{line}"
        rel = _image_path(path, where)
        if rel in first:
            raise DataError(f"{where}: image {rel!r} is listed twice (also id {first[rel]})")
        first[rel] = i
        line, value = labels[i]
        label_list.append(_class_of(value, f"{source(LABELS_FILE)}:{line}", classes) - 1)
        line, value = split[i]
        if value not in ("0", "1"):
            raise DataError(
                f"{source(SPLIT_FILE)}:{line}: expected 1 (train) or 0 (test), got {value!r}"
            )
        train_list.append(value == "1")
    is_train = np.asarray(train_list, dtype=bool)
    for part, count in (("training", is_train.sum()), ("test", (~is_train).sum())):
        if count == 0:
            raise DataError(f"{source(SPLIT_FILE)}: no {part} images")
    return CubMetadata(
        paths=tuple(first),
        labels=np.asarray(label_list, dtype=np.int64),
        is_train=is_train,
        label_names=tuple(classes[c][1] for c in range(1, len(classes) + 1)),
    )


def fit_image(data: bytes, size: int, source: str) -> np.ndarray:
    """Decode an image, make it RGB, resize its shorter side to ``size`` and keep the
    centre ``size`` x ``size`` square: uint8 (3, size, size)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            rgb = image.convert("RGB")  # decodes all of it: a truncated file fails here
    except UnidentifiedImageError as e:
        raise DataError(f"{source}: not an image file Pillow can read") from e
    except Exception as e:  # a corrupt image can raise almost any exception type
        reason = " ".join(str(e).split())
        raise DataError(f"{source}: corrupt image ({type(e).__name__}: {reason})") from e
    w, h = rgb.size
    shorter = min(w, h)
    # Integer arithmetic: the shorter side becomes exactly ``size``, the other at least that.
    new_w = max(size, (w * size + shorter // 2) // shorter)
    new_h = max(size, (h * size + shorter // 2) // shorter)
    rgb = rgb.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    rgb = rgb.crop((left, top, left + size, top + size))
    return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)


def _member_key(path: Path, member: tarfile.TarInfo) -> tuple[bool, str] | None:
    """(is an image, key) of a member the reader uses: a text file by its name, an image by
    its path under images/; None for the rest. A member that leads outside is refused."""
    parts = PurePosixPath(member.name).parts
    if member.name.startswith("/") or ".." in parts:
        raise DataError(f"{path}: member {member.name!r} leads outside the archive")
    if parts[:1] == (CUB_DIRECTORY,):
        parts = parts[1:]
    if len(parts) == 1 and parts[0] in METADATA_FILES:
        return False, parts[0]
    if len(parts) >= 2 and parts[0] == "images":
        return True, "/".join(parts[1:])
    return None


def _read_archive(
    path: Path, size: int, progress: bool
) -> tuple[CubMetadata, Iterator[np.ndarray]]:
    """One pass over the tar: the metadata checked, every image under images/ decoded; the
    images listed come back in id order."""
    regular_file(path, "CUB-200 archive", DataError)  # not a FIFO, a device or a missing file
    metadata: dict[str, bytes] = {}
    #: image path under images/ -> the decoded image, or the error to raise if it is listed
    images: dict[str, np.ndarray | DataError] = {}
    #: why a metadata member cannot be used (not a regular file), by name
    irregular: dict[str, DataError] = {}
    seen: set[tuple[bool, str]] = set()
    with (
        tar_stream(path) as tar,
        tqdm(desc="cub200 images", unit="img", disable=not progress, leave=False) as bar,
    ):
        for member in tar:
            named = _member_key(path, member)
            if named is None:
                continue
            is_image, key = named
            source = f"{path}:{member.name}"
            if not member.isfile():  # an error only if the member is needed
                kind = MEMBER_KINDS.get(member.type, "not a regular file")
                error = DataError(f"{source}: is {kind}, not a regular file")
                (images if is_image else irregular)[key] = error
                continue
            if (is_image, key) in seen:
                raise DataError(f"{path}: member {member.name!r} occurs twice")
            seen.add((is_image, key))
            data = member_data(tar, member)
            if not is_image:
                metadata[key] = data
                irregular.pop(key, None)
                continue
            try:
                images[key] = fit_image(data, size, source)
            except DataError as e:  # an error only if images.txt lists it
                images[key] = e
            bar.update()
    if irregular:  # a metadata file that is a link, a directory, ...
        raise next(iter(irregular.values()))
    missing = [m for m in METADATA_FILES if m not in metadata]
    if missing:
        raise DataError(f"{path}: missing member(s) {', '.join(missing)} (under {CUB_DIRECTORY}/)")
    meta = parse_metadata(metadata, lambda m: f"{path}:{m}")

    def listed() -> Iterator[np.ndarray]:
        for rel in meta.paths:
            image = images.pop(rel, None)
            if image is None:
                raise DataError(f"{path}: no member images/{rel} (listed in {IMAGES_FILE})")
            if isinstance(image, DataError):
                raise image
            yield image

    return meta, listed()


def _read_folder(path: Path, size: int, progress: bool) -> tuple[CubMetadata, Iterator[np.ndarray]]:
    """The metadata of the folder ``path`` or its ``CUB_200_2011/``, checked; its images,
    read and decoded one by one in id order."""
    root = path
    if not any((path / m).exists() for m in METADATA_FILES) and (path / CUB_DIRECTORY).is_dir():
        root = path / CUB_DIRECTORY
    missing = [m for m in METADATA_FILES if not (root / m).exists()]
    if missing:
        raise DataError(f"{root}: missing {', '.join(missing)} (the {CUB_DIRECTORY} folder)")
    raw = {
        m: regular_file(root / m, "CUB-200 metadata", DataError).read_bytes()
        for m in METADATA_FILES
    }
    meta = parse_metadata(raw, lambda m: str(root / m))

    def listed() -> Iterator[np.ndarray]:
        image_dir = (root / "images").resolve()
        for rel in tqdm(
            meta.paths, desc="cub200 images", unit="img", disable=not progress, leave=False
        ):
            file = root / "images" / rel
            if file.exists() and not file.resolve().is_relative_to(image_dir):
                raise DataError(f"{file}: a link that leads outside {root / 'images'}")
            data = regular_file(file, "CUB-200 image", DataError).read_bytes()
            yield fit_image(data, size, str(file))

    return meta, listed()


def load_cub200(path: str | Path, *, size: int = CUB_SIZE, progress: bool = False) -> DataSplit:
    """Read ``CUB_200_2011.tgz`` (any tar, gzip/bz2/xz or plain) or its extracted folder
    into uint8 (N, 3, size, size) centre crops, labels 0..199 and the class names.

    The train and test arrays are allocated once, at their final size, and filled in id
    order (a boolean index of one big array would briefly need twice the memory).
    """
    if size < 1:
        raise ValueError(f"--size must be >= 1, got {size}")
    path = Path(path)
    read = _read_folder if path.is_dir() else _read_archive
    meta, images = read(path, size, progress)
    n_train = int(meta.is_train.sum())
    train = np.empty((n_train, 3, size, size), dtype=np.uint8)
    test = np.empty((len(meta.paths) - n_train, 3, size, size), dtype=np.uint8)
    slot = np.where(meta.is_train, np.cumsum(meta.is_train), np.cumsum(~meta.is_train)) - 1
    for k, image in enumerate(images):
        (train if meta.is_train[k] else test)[slot[k]] = image
    return DataSplit(
        name="cub200" if size == CUB_SIZE else f"cub200-{size}",
        train_images=train,
        train_labels=meta.labels[meta.is_train],
        test_images=test,
        test_labels=meta.labels[~meta.is_train],
        label_names=meta.label_names,
    )
