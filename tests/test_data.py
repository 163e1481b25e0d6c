"""Data conversion: CIFAR archives (synthetic, Python-2 style), CUB-200-2011 archives
(synthetic, a few small images) and the bundled digits."""

from __future__ import annotations

import io
import json
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("GLOG_minloglevel", "2")
caffe = pytest.importorskip("caffe")
lmdb = pytest.importorskip("lmdb")

from caffe.proto import caffe_pb2  # noqa: E402

from pyirg import prepare  # noqa: E402
from pyirg.data.cifar import UnsafePickleError, load_cifar, safe_unpickle  # noqa: E402
from pyirg.data.core import DataError  # noqa: E402
from pyirg.data.cub import fit_image, load_cub200  # noqa: E402
from pyirg.data.digits import load_digits_split  # noqa: E402
from pyirg.data.feed import array_batch_fn, pixel_mean  # noqa: E402
from pyirg.data.writer import read_datum_lmdb, read_npy_split  # noqa: E402

# --------------------------------------------------------------------------- archive generator


class Py2Pickler(pickle._Pickler):  # the pure-Python pickler lets us choose the opcodes
    """Writes pickles shaped like Python 2's cPickle output in the official archives.

    Python 2 ``str`` (every key, label name and the raw image bytes) becomes
    SHORT_BINSTRING/BINSTRING, and numpy's reconstructor is named
    ``numpy.core.multiarray._reconstruct`` as old numpy wrote it.
    """

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj: bytes | str) -> None:
        data = obj.encode("latin-1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + len(data).to_bytes(4, "little") + data)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str

    def save_global(self, obj: object, name: str | None = None) -> None:
        if getattr(obj, "__name__", None) == "_reconstruct":
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
        else:
            super().save_global(obj, name)


def py2_pickle(obj: object) -> bytes:
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def make_cifar_batches(
    variant: str, n: int = 3, seed: int = 0, *, n_test: int = 4
) -> dict[str, object]:
    """Member name -> Python object of a small CIFAR-format archive."""
    rng = np.random.default_rng(seed)

    def batch(count: int, tag: str) -> dict[str, object]:
        d: dict[str, object] = {
            "batch_label": tag,
            "data": rng.integers(0, 256, size=(count, 3072), dtype=np.uint8),
            "filenames": [f"img_{i}.png" for i in range(count)],
        }
        if variant == "cifar10":
            d["labels"] = [int(x) for x in rng.integers(0, 10, count)]
        else:
            d["fine_labels"] = [int(x) for x in rng.integers(0, 100, count)]
            d["coarse_labels"] = [int(x) for x in rng.integers(0, 20, count)]
        return d

    if variant == "cifar10":
        members: dict[str, object] = {
            f"data_batch_{i}": batch(n, f"training batch {i} of 5") for i in range(1, 6)
        }
        members["test_batch"] = batch(n_test, "testing batch 1 of 1")
        members["batches.meta"] = {
            "label_names": [f"class{i}" for i in range(10)],
            "num_cases_per_batch": n,
            "num_vis": 3072,
        }
    else:
        members = {"train": batch(5 * n, "training"), "test": batch(n_test, "testing")}
        members["meta"] = {
            "fine_label_names": [f"fine{i}" for i in range(100)],
            "coarse_label_names": [f"coarse{i}" for i in range(20)],
        }
    return members


def write_archive(
    path: Path, variant: str, members: dict[str, object], raw: dict[str, bytes] | None = None
) -> Path:
    """Write a .tar.gz like the official one; ``raw`` members are written as given."""
    top = "cifar-10-batches-py" if variant == "cifar10" else "cifar-100-python"
    with tarfile.open(path, "w:gz") as tar:
        blobs = {name: py2_pickle(obj) for name, obj in members.items()}
        blobs.update(raw or {})
        blobs["readme.html"] = b"<html></html>"
        for name, data in blobs.items():
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def lmdb_records(path: Path) -> list[tuple[bytes, caffe_pb2.Datum]]:
    """Read an LMDB with lmdb + caffe_pb2 directly (independent of pyirg's reader)."""
    env = lmdb.open(str(path), readonly=True, lock=False)
    with env.begin() as txn:
        records = [(k, caffe_pb2.Datum.FromString(v)) for k, v in txn.cursor()]
    env.close()
    return records


def datum_array(datum: caffe_pb2.Datum) -> np.ndarray:
    shape = (datum.channels, datum.height, datum.width)
    return np.frombuffer(datum.data, np.uint8).reshape(shape)


def read_mean(path: Path) -> np.ndarray:
    blob = caffe_pb2.BlobProto.FromString(path.read_bytes())
    return caffe.io.blobproto_to_array(blob)


def expected_arrays(members: dict[str, object], names: list[str], key: str):
    images = np.concatenate([members[n]["data"] for n in names]).reshape(-1, 3, 32, 32)
    labels = np.concatenate([members[n][key] for n in names])
    return images, labels


def leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


# --------------------------------------------------------------------------- CIFAR


def test_py2_pickle_generator_matches_real_format() -> None:
    # The generator must produce what the loader meets in real files: byte strings and
    # the numpy 1.x global name; a standard Python 3 pickle would test something else.
    data = py2_pickle({"data": np.zeros((1, 3072), np.uint8), "labels": [1]})
    assert b"numpy.core.multiarray\n_reconstruct" in data
    assert b"_codecs" not in data
    batch = safe_unpickle(data, "x")
    assert batch["labels"] == [1] and batch["data"].shape == (1, 3072)


def test_cifar10_archive_to_lmdb(tmp_path: Path) -> None:
    members = make_cifar_batches("cifar10", n=3, seed=1)
    archive = write_archive(tmp_path / "cifar-10-python.tar.gz", "cifar10", members)
    out = tmp_path / "c10"
    assert prepare.main(["cifar10", str(archive), str(out), "--quiet"]) == 0

    train_names = [f"data_batch_{i}" for i in range(1, 6)]
    images, labels = expected_arrays(members, train_names, "labels")
    records = lmdb_records(out / "train_lmdb")
    assert [k for k, _ in records] == [f"{i:08d}".encode() for i in range(15)]
    np.testing.assert_array_equal(np.stack([datum_array(d) for _, d in records]), images)
    assert [d.label for _, d in records] == list(labels)

    test_images, test_labels = expected_arrays(members, ["test_batch"], "labels")
    got_images, got_labels = read_datum_lmdb(out / "test_lmdb")
    np.testing.assert_array_equal(got_images, test_images)
    np.testing.assert_array_equal(got_labels, test_labels)

    mean = read_mean(out / "mean.binaryproto")
    assert mean.shape == (1, 3, 32, 32)
    np.testing.assert_allclose(mean[0], images.astype(np.float64).mean(axis=0), rtol=1e-6)

    padded = np.stack([datum_array(d) for _, d in lmdb_records(out / "train_pad_lmdb")])
    assert padded.shape == (15, 3, 40, 40)
    np.testing.assert_array_equal(padded[:, :, 4:36, 4:36], images)
    border = padded.copy()
    border[:, :, 4:36, 4:36] = 0
    assert not border.any()
    mean_pad = read_mean(out / "mean_pad.binaryproto")
    assert mean_pad.shape == (1, 3, 40, 40)
    np.testing.assert_allclose(mean_pad[0], padded.astype(np.float64).mean(axis=0), rtol=1e-6)
    assert (out / "labels.txt").read_text().split() == [f"class{i}" for i in range(10)]
    assert leftovers(tmp_path) == []


def test_caffe_data_layer_reads_padded_lmdb(tmp_path: Path) -> None:
    """Caffe's own Data layer: mean_pad + crop 32 of the padded LMDB gives image - mean."""
    members = make_cifar_batches("cifar10", n=2, seed=2)
    archive = write_archive(tmp_path / "c.tar.gz", "cifar10", members)
    out = tmp_path / "c10"
    assert prepare.main(["cifar10", str(archive), str(out), "--quiet"]) == 0
    from caffe import layers as L

    ns = caffe.NetSpec()
    ns.data, ns.label = L.Data(
        source=str(out / "train_pad_lmdb"),
        backend=caffe.params.Data.LMDB,
        batch_size=4,
        transform_param=dict(mean_file=str(out / "mean_pad.binaryproto"), crop_size=32),
        ntop=2,
    )
    net_file = tmp_path / "data.prototxt"
    net_file.write_text(str(ns.to_proto()))
    net = caffe.Net(str(net_file), caffe.TEST)  # TEST: the centre crop, no mirror
    net.forward()
    images, labels = expected_arrays(members, [f"data_batch_{i}" for i in range(1, 6)], "labels")
    mean = read_mean(out / "mean.binaryproto")[0]
    np.testing.assert_allclose(net.blobs["data"].data, images[:4] - mean, atol=1e-4)
    np.testing.assert_array_equal(net.blobs["label"].data, labels[:4])


@pytest.mark.parametrize("labels", ["fine", "coarse"])
def test_cifar100_from_extracted_directory(tmp_path: Path, labels: str) -> None:
    members = make_cifar_batches("cifar100", n=2, seed=3)
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    for name, obj in members.items():
        (root / name).write_bytes(py2_pickle(obj))
    split = load_cifar(tmp_path, "cifar100", labels=labels)
    key = f"{labels}_labels"
    np.testing.assert_array_equal(split.train_labels, members["train"][key])
    np.testing.assert_array_equal(split.test_labels, members["test"][key])
    assert split.num_classes == (100 if labels == "fine" else 20)
    assert split.label_names[0] == f"{labels}0"
    out = tmp_path / "out"
    argv = ["cifar100", str(root), str(out), "--labels", labels, "--pad", "0", "--quiet"]
    assert prepare.main(argv) == 0
    assert not (out / "train_pad_lmdb").exists()
    np.testing.assert_array_equal(read_datum_lmdb(out / "train_lmdb")[1], split.train_labels)


def _truncated(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _bad_case(tmp_path: Path, case: str) -> tuple[Path, str]:
    """Build a broken archive; return it and a fragment the error message must contain."""
    members = make_cifar_batches("cifar10", n=2, seed=4)
    raw: dict[str, bytes] = {}
    expect = "data_batch_2"
    if case == "truncated":
        expect = "tar"
    elif case == "not_a_tar":
        path = tmp_path / "junk.tar.gz"
        path.write_bytes(b"this is not an archive" * 10)
        return path, "tar"
    elif case == "missing_member":
        del members["data_batch_2"]
    elif case == "bad_shape":
        members["data_batch_2"]["data"] = np.zeros((2, 3000), np.uint8)
    elif case == "label_range":
        members["data_batch_2"]["labels"] = [3, 10]
    elif case == "label_count":
        members["data_batch_2"]["labels"] = [3]
    elif case == "not_a_pickle":
        del members["data_batch_2"]
        raw["data_batch_2"] = b"\x80\x02garbage"
    path = write_archive(tmp_path / "c.tar.gz", "cifar10", members, raw)
    if case == "truncated":
        _truncated(path)
    return path, expect


@pytest.mark.parametrize(
    "case",
    [
        "truncated",
        "not_a_tar",
        "missing_member",
        "bad_shape",
        "label_range",
        "label_count",
        "not_a_pickle",
    ],
)
def test_corrupt_cifar_input_leaves_nothing(
    tmp_path: Path, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    archive, expect = _bad_case(tmp_path, case)
    out = tmp_path / "out"
    assert prepare.main(["cifar10", str(archive), str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert expect in err and str(archive) in err
    with pytest.raises(DataError):
        load_cifar(archive, "cifar10")
    assert not out.exists()
    assert leftovers(tmp_path) == []


class _Evil:
    def __init__(self, call: object, arg: str) -> None:
        self.call, self.arg = call, arg

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return self.call, (self.arg,)


@pytest.mark.parametrize("how", ["os.system", "builtins.exec"])
def test_malicious_pickle_is_refused_and_not_run(tmp_path: Path, how: str) -> None:
    marker = tmp_path / "pwned"
    if how == "os.system":
        evil = _Evil(os.system, f"touch {marker}")
    else:
        evil = _Evil(exec, f"open({str(marker)!r}, 'w').close()")
    members = make_cifar_batches("cifar10", n=2, seed=5)
    members["data_batch_3"]["labels"] = evil
    archive = write_archive(tmp_path / "evil.tar.gz", "cifar10", members)
    with pytest.raises(UnsafePickleError, match="data_batch_3"):
        load_cifar(archive, "cifar10")
    out = tmp_path / "out"
    assert prepare.main(["cifar10", str(archive), str(out), "--quiet"]) == 2
    assert not marker.exists()
    assert not out.exists()


def test_failure_while_writing_removes_temp_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pyirg.data import writer

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError("disk full (simulated)")

    members = make_cifar_batches("cifar10", n=2, seed=6)
    archive = write_archive(tmp_path / "c.tar.gz", "cifar10", members)
    monkeypatch.setattr(writer, "write_mean_binaryproto", boom)  # after the LMDBs are written
    with pytest.raises(OSError, match="simulated"):
        writer.write_dataset(load_cifar(archive), tmp_path / "out", pad=4)
    assert not (tmp_path / "out").exists()
    assert leftovers(tmp_path) == []


def test_existing_output_needs_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "digits"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    assert prepare.main(["digits", str(out), "--quiet"]) == 2
    assert (out / "keep.txt").exists()
    # --overwrite replaces only a folder prepare-data wrote, never someone's own files
    assert prepare.main(["digits", str(out), "--quiet", "--overwrite"]) == 2
    assert (out / "keep.txt").read_text() == "old"
    made = tmp_path / "made"
    assert prepare.main(["digits", str(made), "--quiet"]) == 0
    (made / "extra.txt").write_text("stale")
    assert prepare.main(["digits", str(made), "--quiet", "--overwrite"]) == 0
    assert not (made / "extra.txt").exists() and (made / "train_lmdb").is_dir()
    info = json.loads((made / "info.json").read_text())
    assert info["scale"] == pytest.approx(1 / 255)  # the data set's one preprocessing
    assert leftovers(tmp_path) == []


# --------------------------------------------------------------------------- digits


def test_digits_conversion(tmp_path: Path) -> None:
    out = tmp_path / "digits"
    assert prepare.main(["digits", str(out), "--quiet"]) == 0
    train_images, train_labels = read_datum_lmdb(out / "train_lmdb")
    test_images, test_labels = read_datum_lmdb(out / "test_lmdb")
    assert train_images.shape == (1000, 1, 8, 8) and test_images.shape == (797, 1, 8, 8)
    assert train_images.max() == 255 and train_images.dtype == np.uint8
    padded, _ = read_datum_lmdb(out / "train_pad_lmdb")
    assert padded.shape == (1000, 1, 10, 10)
    np.testing.assert_array_equal(padded[:, :, 1:9, 1:9], train_images)
    assert read_mean(out / "mean_pad.binaryproto").shape == (1, 1, 10, 10)
    np.testing.assert_allclose(
        read_mean(out / "mean.binaryproto")[0], train_images.mean(axis=0), rtol=1e-6
    )
    split = read_npy_split(out)
    np.testing.assert_array_equal(split.train_images, train_images)
    np.testing.assert_array_equal(split.test_labels, test_labels)
    np.testing.assert_array_equal(split.train_labels, train_labels)

    from sklearn.datasets import load_digits

    all_counts = np.bincount(load_digits().target, minlength=10)
    train_counts = np.bincount(train_labels, minlength=10)
    np.testing.assert_array_equal(train_counts + np.bincount(test_labels, minlength=10), all_counts)
    np.testing.assert_allclose(train_counts / all_counts, 1000 / 1797, atol=0.02)  # stratified


def test_digits_split_is_deterministic() -> None:
    a, b, c = load_digits_split(seed=0), load_digits_split(seed=0), load_digits_split(seed=1)
    np.testing.assert_array_equal(a.train_images, b.train_images)
    np.testing.assert_array_equal(a.test_labels, b.test_labels)
    assert not np.array_equal(a.train_labels, c.train_labels)
    small = load_digits_split(test_fraction=0.25, seed=0)
    assert len(small.test_labels) == round(0.25 * 1797)
    with pytest.raises(ValueError):
        load_digits_split(test_fraction=1.5)


def test_array_batch_fn_is_a_function_of_the_iteration() -> None:
    split = load_digits_split()
    images, labels = split.train_images[:20], split.train_labels[:20]
    mean = pixel_mean(np.pad(images, ((0, 0), (0, 0), (1, 1), (1, 1))))
    fn = array_batch_fn(images, labels, 5, seed=7, pad=1, mean=mean, scale=0.5)
    again = array_batch_fn(images, labels, 5, seed=7, pad=1, mean=mean, scale=0.5)
    for it in (3, 0, 11, 3):
        a, b = fn(it), again(it)
        np.testing.assert_array_equal(a["data"], b["data"])
        np.testing.assert_array_equal(a["label"], b["label"])
    assert fn(0)["data"].shape == (5, 1, 8, 8) and fn(0)["data"].dtype == np.float32
    # one epoch (4 iterations of 5) visits every image exactly once
    plain = array_batch_fn(images, np.arange(20), 5, seed=7)
    seen = np.concatenate([plain(i)["label"] for i in range(4)])
    assert sorted(seen.tolist()) == list(range(20))
    assert not np.array_equal(seen, np.concatenate([plain(i)["label"] for i in range(4, 8)]))
    # without padding, shuffling or scale the data are the images minus the mean
    seq = array_batch_fn(images, labels, 5, shuffle=False, mean=pixel_mean(images))
    np.testing.assert_allclose(seq(1)["data"], images[5:10] - images.mean(axis=0), atol=1e-5)


def test_digits_with_k_training_images_per_class() -> None:
    split = load_digits_split(train_per_class=10)
    assert np.bincount(split.train_labels).tolist() == [10] * 10
    assert len(split.train_labels) + len(split.test_labels) == 1797
    train = {
        img.tobytes() + bytes([lab]) for img, lab in zip(split.train_images, split.train_labels)
    }
    test = [img.tobytes() + bytes([lab]) for img, lab in zip(split.test_images, split.test_labels)]
    assert len(train & set(test)) <= 2  # the digits data holds a few exact duplicates
    again = load_digits_split(train_per_class=10)
    assert np.array_equal(split.train_images, again.train_images)  # a fixed choice
    with pytest.raises(ValueError, match="train_per_class"):
        load_digits_split(train_per_class=174)


# --------------------------------------------------------------- archives read to the end


def test_a_flipped_byte_fails_the_gzip_crc(tmp_path: Path, capsys) -> None:
    """The tar stream ends before gzip's trailer: it must still be read and checked."""
    path = write_archive(tmp_path / "c.tar.gz", "cifar10", make_cifar_batches("cifar10", n=2))
    data = bytearray(path.read_bytes())
    # A byte of the gzip trailer's CRC-32: the deflate stream itself stays valid, so only
    # reading to the end notices (a flip inside the data could also break the inflater).
    data[-6] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="CRC"):
        load_cifar(path, "cifar10")
    assert prepare.main(["cifar10", str(path), str(tmp_path / "out"), "--quiet"]) == 2
    assert "CRC" in capsys.readouterr().err


def test_python3_protocol_2_pickles_are_accepted(tmp_path: Path) -> None:
    members = make_cifar_batches("cifar10", n=2, seed=7)
    raw = {name: pickle.dumps(obj, protocol=2) for name, obj in members.items()}
    assert b"_codecs" in raw["data_batch_1"]  # Python 3's bytes under protocol 2
    path = write_archive(tmp_path / "p3.tar.gz", "cifar10", {}, raw)
    split = load_cifar(path, "cifar10")
    assert len(split.train_labels) == 10 and split.label_names[0] == "class0"


def test_codecs_global_runs_nothing_but_latin1(tmp_path: Path) -> None:
    evil = pickle.dumps({"data": b"x"}, protocol=2).replace(b"latin1", b"cp1252")
    with pytest.raises(DataError):
        safe_unpickle(evil, "evil")


def test_fifo_is_refused_with_a_message(tmp_path: Path) -> None:
    fifo = tmp_path / "archive.tar.gz"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match="is a FIFO"):
        load_cifar(fifo, "cifar10")


# --------------------------------------------------------------------------- CUB-200-2011

# (width, height, PIL mode, format, class 1..3, train?) of the synthetic images, by id:
# non-square both ways, a square one, grey-level and palette images, JPEG and PNG.
CUB_IMAGES = {
    1: (40, 24, "RGB", "JPEG", 1, True),
    2: (24, 40, "RGB", "PNG", 1, False),
    3: (30, 30, "L", "JPEG", 2, True),
    4: (36, 20, "P", "PNG", 2, True),
    5: (20, 28, "RGB", "JPEG", 3, False),
    6: (28, 44, "RGBA", "PNG", 3, True),
}
CUB_NAMES = ("001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross")
NPY_NAMES = ("train_images", "train_labels", "test_images", "test_labels")


def cub_image_bytes(width: int, height: int, mode: str, fmt: str, seed: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1, "P": 1}[mode]
    pixels = rng.integers(0, 256, size=(height, width, channels), dtype=np.uint8)
    if mode in ("L", "P"):
        image = Image.fromarray(pixels[:, :, 0], mode="L")
        if mode == "P":
            image = image.convert("P")
    else:
        image = Image.fromarray(pixels, mode=mode)
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def make_cub_files(seed: int = 0) -> dict[str, bytes]:
    """Path under CUB_200_2011/ -> bytes of a tiny CUB-format data set (3 classes)."""
    files: dict[str, bytes] = {}
    images, labels, split = [], [], []
    for i, (w, h, mode, fmt, c, train) in CUB_IMAGES.items():
        ext = "jpg" if fmt == "JPEG" else "png"
        rel = f"{CUB_NAMES[c - 1]}/{CUB_NAMES[c - 1].split('.')[1]}_{i:04d}.{ext}"
        files[f"images/{rel}"] = cub_image_bytes(w, h, mode, fmt, seed + i)
        images.append(f"{i} {rel}\n")
        labels.append(f"{i} {c}\n")
        split.append(f"{i} {int(train)}\n")
    files["images.txt"] = "".join(images).encode()
    files["image_class_labels.txt"] = "".join(reversed(labels)).encode()  # order is by id
    files["train_test_split.txt"] = "".join(split).encode()
    files["classes.txt"] = "".join(f"{c} {n}\n" for c, n in enumerate(CUB_NAMES, 1)).encode()
    files["README"] = b"not read"
    files["images/Thumbs.db"] = b"\x00 junk that no listed path names"
    return files


def write_cub_tgz(
    path: Path, files: dict[str, bytes], extra: list[tarfile.TarInfo] | None = None
) -> Path:
    """A .tgz laid out as the official one: images first, the text files after them;
    ``extra`` members (links, directories) are added as they are."""
    with tarfile.open(path, "w:gz") as tar:
        for name in ("CUB_200_2011", "CUB_200_2011/images"):
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for name in sorted(files, key=lambda n: not n.startswith("images/")):
            info = tarfile.TarInfo(f"CUB_200_2011/{name}")
            info.size = len(files[name])
            tar.addfile(info, io.BytesIO(files[name]))
        for info in extra or []:
            tar.addfile(info)
        info = tarfile.TarInfo("attributes.txt")
        tar.addfile(info, io.BytesIO(b""))
    return path


def write_cub_folder(parent: Path, files: dict[str, bytes]) -> Path:
    root = parent / "CUB_200_2011"
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def expected_crop(data: bytes, size: int) -> np.ndarray:
    """Shorter side to ``size`` (bilinear), centre crop: computed here, apart from pyirg."""
    from PIL import Image

    image = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = image.size
    if w <= h:
        new = (size, int(round(h * size / w)))
    else:
        new = (int(round(w * size / h)), size)
    pixels = np.asarray(image.resize(new, Image.BILINEAR))
    top, left = (new[1] - size) // 2, (new[0] - size) // 2
    return pixels[top : top + size, left : left + size].transpose(2, 0, 1)


def expected_cub(files: dict[str, bytes], size: int) -> dict[str, np.ndarray]:
    lines = files["images.txt"].decode().split("\n")
    paths = {int(line.split()[0]): line.split()[1] for line in lines if line}
    out: dict[str, list[np.ndarray]] = {k: [] for k in NPY_NAMES}
    for i, (_, _, _, _, c, train) in sorted(CUB_IMAGES.items()):
        part = "train" if train else "test"
        out[f"{part}_images"].append(expected_crop(files[f"images/{paths[i]}"], size))
        out[f"{part}_labels"].append(np.int64(c - 1))
    return {k: np.stack(v) for k, v in out.items()}


@pytest.mark.parametrize("form", ["tgz", "folder", "parent-folder"])
def test_cub200_archive_to_npy_and_lmdb(tmp_path: Path, form: str) -> None:
    files = make_cub_files(seed=1)
    if form == "tgz":
        archive, size, argv = write_cub_tgz(tmp_path / "CUB_200_2011.tgz", files), 224, []
    else:
        root = write_cub_folder(tmp_path / "src", files)
        archive, size = (root if form == "folder" else root.parent), 16
        argv = ["--size", "16"]
    out = tmp_path / "cub200"
    assert prepare.main(["cub200", str(archive), str(out), "--quiet", *argv]) == 0

    expected = expected_cub(files, size)
    split = read_npy_split(out)
    for name in NPY_NAMES:
        np.testing.assert_array_equal(getattr(split, name), expected[name], err_msg=name)
    assert split.train_images.shape == (4, 3, size, size)
    assert split.train_images.dtype == np.uint8 and split.train_labels.tolist() == [0, 1, 1, 2]
    assert split.test_labels.tolist() == [0, 2]
    assert (out / "labels.txt").read_text().splitlines() == list(CUB_NAMES)
    images, labels = read_datum_lmdb(out / "train_lmdb")
    np.testing.assert_array_equal(images, expected["train_images"])
    np.testing.assert_array_equal(labels, expected["train_labels"])
    assert not (out / "train_pad_lmdb").exists()  # pad 0: training mirrors, no shifts
    info = json.loads((out / "info.json").read_text())
    assert info["image_shape"] == [3, size, size] and info["pad"] == 0
    assert (info["train_count"], info["test_count"], info["num_classes"]) == (4, 2, 3)
    assert info["name"] == ("cub200" if size == 224 else "cub200-16")
    assert leftovers(tmp_path) == []


def test_cub200_crop_keeps_the_centre() -> None:
    """A 42x24 image with a white band in its middle: the 16x16 crop (of 28x16) is centred."""
    from PIL import Image

    pixels = np.zeros((24, 42, 3), np.uint8)
    pixels[:, 15:27] = 255
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    crop = fit_image(buf.getvalue(), 16, "x.png")
    assert crop.shape == (3, 16, 16)
    column = crop[0, 8]
    assert column[8] == 255 and column[0] == 0 and column[-1] == 0
    np.testing.assert_array_equal(column, column[::-1])  # symmetric: centred


def _cub_bad(tmp_path: Path, case: str) -> tuple[Path, str, str]:
    """A broken CUB input; return it, the file the message must name and a fragment."""
    files = make_cub_files(seed=2)
    first = files["images.txt"].decode().split("\n")[0].split()[1]
    extra: list[tarfile.TarInfo] = []
    named, fragment = "images.txt", ""
    if case == "missing_metadata":
        del files["train_test_split.txt"]
        named, fragment = "", "missing member(s) train_test_split.txt"
    elif case == "ids_disagree":
        files["image_class_labels.txt"] += b"7 1\n"
        named, fragment = "image_class_labels.txt", "id 7 is not in images.txt"
    elif case == "id_missing":
        files["train_test_split.txt"] = b"2 0\n3 1\n4 1\n5 0\n6 1\n"
        named, fragment = "train_test_split.txt", "no entry for id 1"
    elif case == "class_range":
        files["image_class_labels.txt"] = files["image_class_labels.txt"].replace(b"5 3", b"5 201")
        named, fragment = "image_class_labels.txt", "class 201 outside 1..200"
    elif case == "class_zero":
        files["image_class_labels.txt"] = files["image_class_labels.txt"].replace(b"5 3", b"5 0")
        named, fragment = "image_class_labels.txt", "class 0 outside 1..200"
    elif case == "class_unnamed":
        files["classes.txt"] = b"1 a\n2 b\n"
        named, fragment = "image_class_labels.txt", "class 3 is not in classes.txt"
    elif case in ("absolute_path", "dotdot_path"):
        bad = "/etc/passwd" if case == "absolute_path" else "../../CUB_200_2011/README"
        files["images.txt"] = files["images.txt"].replace(first.encode(), bad.encode())
        fragment = "leads outside images/"
    elif case == "corrupt_image":
        data = files[f"images/{first}"]
        files[f"images/{first}"] = data[: len(data) // 2]  # a truncated JPEG
        named, fragment = first, "corrupt image"
    elif case == "not_an_image":
        files[f"images/{first}"] = b"GIF? no"
        named, fragment = first, "not an image file"
    elif case == "absent_image":
        del files[f"images/{first}"]
        fragment = f"images/{first}"
    elif case == "symlink_member":
        del files[f"images/{first}"]
        info = tarfile.TarInfo(f"CUB_200_2011/images/{first}")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        extra.append(info)
        named, fragment = first, "is a symbolic link, not a regular file"
    elif case == "directory_metadata":
        del files["classes.txt"]
        info = tarfile.TarInfo("CUB_200_2011/classes.txt")
        info.type = tarfile.DIRTYPE
        extra.append(info)
        named, fragment = "classes.txt", "is a directory, not a regular file"
    elif case == "duplicate_id":
        files["images.txt"] += b"3 somewhere/else.jpg\n"
        fragment = "id 3 occurs twice"
    elif case == "member_escapes":
        info = tarfile.TarInfo("CUB_200_2011/../evil.txt")
        extra.append(info)
        named, fragment = "../evil.txt", "leads outside the archive"
    path = write_cub_tgz(tmp_path / "CUB_200_2011.tgz", files, extra)
    return path, named, fragment


CUB_BAD_CASES = [
    "missing_metadata",
    "ids_disagree",
    "id_missing",
    "class_range",
    "class_zero",
    "class_unnamed",
    "absolute_path",
    "dotdot_path",
    "corrupt_image",
    "not_an_image",
    "absent_image",
    "symlink_member",
    "directory_metadata",
    "duplicate_id",
    "member_escapes",
]


@pytest.mark.parametrize("case", CUB_BAD_CASES)
def test_bad_cub_input_is_refused_in_one_line(
    tmp_path: Path, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    archive, named, fragment = _cub_bad(tmp_path, case)
    out = tmp_path / "out"
    assert prepare.main(["cub200", str(archive), str(out), "--quiet", "--size", "8"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert fragment in err and str(archive) in err and named in err, err
    with pytest.raises(DataError, match="CUB_200_2011.tgz"):
        load_cub200(archive, size=8)
    assert not out.exists()
    assert leftovers(tmp_path) == []


def test_bad_cub_folder_names_the_file(tmp_path: Path) -> None:
    files = make_cub_files(seed=3)
    root = write_cub_folder(tmp_path, files)
    first = files["images.txt"].decode().split()[1]
    (root / "images" / first).unlink()
    os.mkfifo(root / "images" / first)  # would block a reader forever
    with pytest.raises(DataError, match=r"CUB-200 image .*_0001\.jpg: is not a regular file"):
        load_cub200(tmp_path, size=8)
    (root / "images" / first).unlink()
    (root / "images" / first).symlink_to(tmp_path / "outside.jpg")
    (tmp_path / "outside.jpg").write_bytes(files[f"images/{first}"])
    with pytest.raises(DataError, match="leads outside"):
        load_cub200(root, size=8)
    (root / "images" / first).unlink()
    (root / "classes.txt").unlink()
    with pytest.raises(DataError, match=r"CUB_200_2011: missing classes\.txt"):
        load_cub200(root, size=8)
    os.mkfifo(root / "classes.txt")
    with pytest.raises(DataError, match=r"classes\.txt: is not a regular file"):
        load_cub200(root, size=8)


def test_cub_archive_fifo_and_crc(tmp_path: Path) -> None:
    fifo = tmp_path / "CUB_200_2011.tgz"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match="CUB_200_2011.tgz: is not a regular file"):
        load_cub200(fifo)
    path = write_cub_tgz(tmp_path / "c.tgz", make_cub_files(seed=4))
    data = bytearray(path.read_bytes())
    data[-6] ^= 0x01  # the gzip trailer's CRC-32: noticed only by reading to the end
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="CRC"):
        load_cub200(path, size=8)


def test_prepare_data_cub200_help(capsys: pytest.CaptureFixture[str]) -> None:
    from pyirg.cli import main as pyirg_main

    with pytest.raises(SystemExit) as exit_info:
        pyirg_main(["prepare-data", "cub200", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "CUB_200_2011.tgz" in text and "--size" in text and "--overwrite" in text
    assert "224" in text


def test_lmdb_size_estimate_fits_224_images(tmp_path: Path) -> None:
    """At 3x224x224 (150 KB, overflow pages) a record must fit the per-record estimate."""
    from pyirg.data.writer import _map_size, write_datum_lmdb

    n, shape = 12, (3, 224, 224)
    images = np.random.default_rng(0).integers(0, 256, size=(n, *shape), dtype=np.uint8)
    write_datum_lmdb(tmp_path / "db", images, np.arange(n))
    env = lmdb.open(str(tmp_path / "db"), readonly=True, lock=False)
    used = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    env.close()
    per_record = (_map_size(2 * n, images[0].size) - _map_size(n, images[0].size)) / n
    assert used / n <= per_record / 2  # the estimate doubles what a record really takes
    # the real training split: 5994 records stay far below what a 64-bit map can address
    assert _map_size(5994, images[0].size) < 4 << 30


def test_lmdb_bytes_depend_on_the_data_only(tmp_path: Path) -> None:
    """The same images written twice give the same data.mdb, whatever the process's heap
    held before: LMDB zeroes the unused part of each page (meminit) instead of writing
    whatever memory it was given, so a data set is reproducible to the byte."""
    import os

    from pyirg.data.writer import write_datum_lmdb

    images = np.random.default_rng(0).integers(0, 256, size=(300, 1, 20, 20), dtype=np.uint8)
    labels = np.arange(300) % 10
    write_datum_lmdb(tmp_path / "a", images, labels)
    junk = [os.urandom(1 << 16) for _ in range(2000)]  # a heap full of other bytes
    del junk
    write_datum_lmdb(tmp_path / "b", images, labels)
    assert (tmp_path / "a" / "data.mdb").read_bytes() == (tmp_path / "b" / "data.mdb").read_bytes()
