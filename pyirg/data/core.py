"""The data sets and the types shared by their readers and writers.

A :class:`DataSplit` is the in-memory form of a data set (numpy arrays in Caffe's
N x C x H x W layout), so the same object feeds both the LMDB writer (for
Data-layer nets) and the array batch functions (for Input-fed nets).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Dataset:
    """A data set's geometry and preprocessing: the one home that the nets (generated LMDB
    nets, the main job's Input-fed nets), the readers and the tools take them from.

    ``pad`` is the zero padding stored in the training LMDB (random crops of ``size`` out
    of ``size + 2 pad`` give the standard CIFAR shift augmentation); ``train_size`` and
    ``test_size`` set the solver's ``test_iter``. ``scale`` multiplies the pixels after
    mean subtraction (CIFAR: none, as the authors' IRG nets; digits: 1/255, as the main
    job trains); ``mirror``: whether random mirroring is a valid augmentation (not for
    digits).
    """

    name: str
    channels: int
    size: int
    num_classes: int
    pad: int
    train_size: int
    test_size: int
    scale: float = 1.0
    mirror: bool = True

    @property
    def root(self) -> str:
        return f"data/{self.name}"

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return self.channels, self.size, self.size


DATASETS: dict[str, Dataset] = {
    "cifar10": Dataset("cifar10", 3, 32, 10, 4, 50000, 10000),
    "cifar100": Dataset("cifar100", 3, 32, 100, 4, 50000, 10000),
    # scikit-learn's 8x8 grey digits, split 1000 / 797 as in the pilot.
    "digits": Dataset("digits", 1, 8, 10, 1, 1000, 797, scale=1.0 / 255, mirror=False),
    # CUB-200-2011's birds as 224x224 centre crops (pyirg/data/cub.py), the authors'
    # MobileNet setting. Pad 0: the random crops of a padded copy would need another
    # train LMDB of about 1.2 GB at this size, which is not stored, so training only mirrors.
    "cub200": Dataset("cub200", 3, 224, 200, 0, 5994, 5794, scale=1.0, mirror=True),
}


class DataError(ValueError):
    """Input data that cannot be converted; the message names the offending file."""


@dataclass(frozen=True)
class DataSplit:
    """A train/test split of uint8 images (N, C, H, W) with int64 labels (N,)."""

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    label_names: tuple[str, ...]

    def __post_init__(self) -> None:
        # Validate once here so that every writer and feeder can trust the arrays.
        for part in ("train", "test"):
            images = getattr(self, f"{part}_images")
            labels = getattr(self, f"{part}_labels")
            if images.dtype != np.uint8 or images.ndim != 4:
                raise DataError(
                    f"{self.name}: {part} images must be uint8 (N, C, H, W), "
                    f"got {images.dtype} {images.shape}"
                )
            if labels.ndim != 1 or len(labels) != len(images):
                raise DataError(
                    f"{self.name}: {part} labels must be a vector of {len(images)} entries, "
                    f"got shape {labels.shape}"
                )
            if len(images) == 0:
                raise DataError(f"{self.name}: the {part} split is empty")
            if labels.min() < 0 or labels.max() >= len(self.label_names):
                raise DataError(f"{self.name}: {part} labels outside [0, {len(self.label_names)})")
        if self.train_images.shape[1:] != self.test_images.shape[1:]:
            raise DataError(
                f"{self.name}: train images {self.train_images.shape[1:]} and test images "
                f"{self.test_images.shape[1:]} differ in shape"
            )

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def subset(self, classes: Sequence[int]) -> DataSplit:
        """Only the instances of ``classes``, relabelled 0..k-1 in the order given: a task
        of its own (cross-task distillation teaches it with a teacher of other classes)."""
        classes = [int(c) for c in classes]
        if len(set(classes)) != len(classes) or not classes:
            raise DataError(f"{self.name}: classes must be distinct and not empty, got {classes}")
        unknown = [c for c in classes if not 0 <= c < self.num_classes]
        if unknown:
            raise DataError(
                f"{self.name}: no class(es) {unknown} (it has 0..{self.num_classes - 1})"
            )
        lookup = np.full(self.num_classes, -1, dtype=np.int64)
        lookup[classes] = np.arange(len(classes))
        parts = {}
        for part in ("train", "test"):
            labels = getattr(self, f"{part}_labels")
            keep = lookup[labels] >= 0
            parts[f"{part}_images"] = getattr(self, f"{part}_images")[keep]
            parts[f"{part}_labels"] = lookup[labels[keep]]
        names = tuple(self.label_names[c] for c in classes)
        return DataSplit(
            name=f"{self.name}[{','.join(map(str, classes))}]", label_names=names, **parts
        )

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        c, h, w = self.train_images.shape[1:]
        return int(c), int(h), int(w)
