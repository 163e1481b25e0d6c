"""Deterministic batches for Input-fed nets.

A Caffe solverstate holds the weights' history and the iteration, but no data
cursor and no random state for augmentation.  A run resumed from a snapshot can
therefore reproduce an uninterrupted run bit for bit only if the batch of
iteration ``i`` is a pure function of ``i`` (and the seed).  That is the
contract of a batch function here: ``batch_fn(iteration) -> {blob: array}``.

The augmentation mirrors Caffe's DataTransformer on a padded Data layer: zero
padding, subtraction of the per-pixel mean of the padded images (the
``mean_pad.binaryproto`` of the writer), a random crop back to the original
size, an optional mirror, then ``scale``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from pyirg.data.core import DataSplit

BatchFn = Callable[[int], Mapping[str, np.ndarray]]


def pad_images(images: np.ndarray, pad: int) -> np.ndarray:
    """Zero-pad (N, C, H, W) images by ``pad`` pixels on each spatial side."""
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    if pad == 0:
        return images
    return np.pad(images, ((0, 0), (0, 0), (pad, pad), (pad, pad)))


def pixel_mean(images: np.ndarray) -> np.ndarray:
    """Per-pixel mean (C, H, W) as Caffe's compute_image_mean computes it.

    compute_image_mean sums the pixels in float and divides by the count in
    float; the sums of uint8 images are exact in float32 below 2**24 / 255
    images, so the integer sum rounded once reproduces it.
    """
    total = images.sum(axis=0, dtype=np.int64).astype(np.float32)
    return total / np.float32(len(images))


def array_batch_fn(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    *,
    seed: int = 0,
    shuffle: bool = True,
    pad: int = 0,
    mirror: bool = False,
    mean: np.ndarray | float | None = None,
    scale: float = 1.0,
    data_blob: str = "data",
    label_blob: str = "label",
) -> BatchFn:
    """Return ``batch_fn(iteration)`` giving float32 data (B, C, H, W) and labels (B,).

    Iteration ``i`` takes positions ``i*B .. i*B+B-1`` of an endless sequence of
    epochs; with ``shuffle`` each epoch is a permutation seeded by (seed, epoch),
    and the crops/mirrors of iteration ``i`` are seeded by (seed, i).  ``mean``
    is subtracted from the padded image (so give the padded mean when pad > 0).
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if images.ndim != 4 or len(images) != len(labels) or len(images) == 0:
        raise ValueError(f"images (N, C, H, W) and N labels expected, got {images.shape}")
    n, _, height, width = images.shape
    padded = pad_images(images, pad)
    offset = np.float32(0) if mean is None else np.asarray(mean, dtype=np.float32)
    label_values = np.asarray(labels, dtype=np.float32)

    @lru_cache(maxsize=4)
    def epoch_order(epoch: int) -> np.ndarray:
        if not shuffle:
            return np.arange(n)
        return np.random.default_rng(
            np.random.SeedSequence(seed, spawn_key=(0, epoch))
        ).permutation(n)

    def batch_fn(iteration: int) -> dict[str, np.ndarray]:
        if iteration < 0:
            raise ValueError(f"iteration must be >= 0, got {iteration}")
        positions = np.arange(iteration * batch_size, (iteration + 1) * batch_size)
        index = np.array([epoch_order(int(p // n))[p % n] for p in positions])
        source = padded[index].astype(np.float32) - offset
        if pad or mirror:
            rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, iteration)))
            ys = rng.integers(0, 2 * pad + 1, size=batch_size)
            xs = rng.integers(0, 2 * pad + 1, size=batch_size)
            flips = rng.random(batch_size) < 0.5 if mirror else np.zeros(batch_size, bool)
            out = np.empty((batch_size, source.shape[1], height, width), np.float32)
            for k in range(batch_size):
                crop = source[k, :, ys[k] : ys[k] + height, xs[k] : xs[k] + width]
                out[k] = crop[:, :, ::-1] if flips[k] else crop
        else:
            out = source
        if scale != 1.0:
            out = out * np.float32(scale)
        return {data_blob: out, label_blob: label_values[index]}

    return batch_fn


@dataclass
class FedSplit:
    """A split as Input-fed nets see it: the per-pixel mean of the padded training images
    subtracted, then ``scale``; training batches are random crops of the padded images
    (mirrored when ``mirror``), test batches whole images in order.

    One object for a run's every net, so the teacher, the students and any embedding
    read through pycaffe see the same preprocessing.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    mean: np.ndarray  # per-pixel mean of the padded training images
    pad: int
    scale: float
    mirror: bool = False

    @classmethod
    def of(cls, split: DataSplit, pad: int, scale: float, mirror: bool = False) -> FedSplit:
        mean = pixel_mean(pad_images(split.train_images, pad))
        return cls(
            split.train_images,
            split.train_labels,
            split.test_images,
            split.test_labels,
            mean,
            pad,
            scale,
            mirror,
        )

    @property
    def centre_mean(self) -> np.ndarray:
        """The padded mean's centre: what is subtracted from an unpadded image."""
        p = self.pad
        return self.mean[:, p:-p, p:-p] if p else self.mean

    def as_fed(self, images: np.ndarray) -> np.ndarray:
        """Whole images as the nets see them (no crop, no mirror): float32."""
        return ((images.astype(np.float32) - self.centre_mean) * self.scale).astype(np.float32)

    def test_array(self) -> np.ndarray:
        """The test images as the nets see them."""
        return self.as_fed(self.test_images)

    def batch_fns(
        self, batch: int, seed: int, data_blob: str = "Data1", label_blob: str = "Data2"
    ) -> tuple[BatchFn, BatchFn]:
        """(train, test) batch functions; the test one walks the test split in order."""
        common = {"scale": self.scale, "data_blob": data_blob, "label_blob": label_blob}
        train_fn = array_batch_fn(
            self.train_images,
            self.train_labels,
            batch,
            seed=seed,
            pad=self.pad,
            mirror=self.mirror,
            mean=self.mean,
            **common,
        )
        test_fn = array_batch_fn(
            self.test_images,
            self.test_labels,
            batch,
            seed=seed,
            shuffle=False,
            mean=self.centre_mean,
            **common,
        )
        return train_fn, test_fn
