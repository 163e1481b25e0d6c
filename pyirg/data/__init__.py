"""Data sets for the IRG experiments, as numpy arrays and as Caffe LMDBs.

- :func:`load_cifar` reads the official CIFAR-10/100 Python archives safely;
- :func:`load_digits_split` gives scikit-learn's bundled digits (no download);
- :func:`write_dataset` writes train/test (and padded train) LMDBs and mean files;
- :func:`array_batch_fn` feeds Input-fed nets deterministically per iteration,
  which is what makes resumed training reproduce an uninterrupted run.
"""

from __future__ import annotations

from .cifar import CIFAR_VARIANTS, SafeUnpickler, UnsafePickleError, load_cifar, safe_unpickle
from .core import DataError, DataSplit
from .digits import DIGITS_TEST_FRACTION, load_digits_split
from .feed import BatchFn, array_batch_fn, pad_images, pixel_mean
from .writer import (
    read_datum_lmdb,
    read_mean_binaryproto,
    read_npy_split,
    write_dataset,
    write_datum_lmdb,
    write_mean_binaryproto,
)

__all__ = [
    "CIFAR_VARIANTS",
    "DIGITS_TEST_FRACTION",
    "BatchFn",
    "DataError",
    "DataSplit",
    "SafeUnpickler",
    "UnsafePickleError",
    "array_batch_fn",
    "load_cifar",
    "load_digits_split",
    "pad_images",
    "pixel_mean",
    "read_datum_lmdb",
    "read_mean_binaryproto",
    "read_npy_split",
    "safe_unpickle",
    "write_datum_lmdb",
    "write_dataset",
    "write_mean_binaryproto",
]
