"""The embedded default data set: scikit-learn's bundled 8x8 digits.

It ships inside scikit-learn (no download), so every test and pilot can run
anywhere.  The 1797 images (values 0..16) are scaled to 0..255 uint8 so they go
through the same Caffe Datum / mean-file path as CIFAR, and split with a
stratified, seeded split (1000 train / 797 test by default, as in the PyTorch
pilot) so every class is represented in both halves and every run of a seed
sees the same split.
"""

from __future__ import annotations

import numpy as np

from pyirg.data.core import DATASETS, DataSplit

DIGITS_SIZE = 1797
#: The default test share: 797 of 1797 images, leaving 1000 for training.
DIGITS_TEST_FRACTION = DATASETS["digits"].test_size / DIGITS_SIZE


def load_digits_split(
    test_fraction: float = DIGITS_TEST_FRACTION, seed: int = 0, train_per_class: int | None = None
) -> DataSplit:
    """Return the digits as a stratified train/test split of (N, 1, 8, 8) uint8 images.

    ``train_per_class``: instead of a test fraction, exactly that many training images
    of each class (chosen by ``seed``), every other image in the test split: a
    low-data setting whose larger test split measures accuracy more finely.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None, :, :]
    labels = digits.target.astype(np.int64)
    if train_per_class is not None:
        counts = np.bincount(labels)
        if not 1 <= train_per_class < counts.min():
            raise ValueError(
                f"train_per_class must lie in [1, {counts.min() - 1}] (the smallest class "
                f"has {counts.min()} images), got {train_per_class}"
            )
        rng = np.random.default_rng(seed)
        train_idx = np.sort(
            np.concatenate(
                [rng.permutation(np.flatnonzero(labels == c))[:train_per_class] for c in range(10)]
            )
        )
        test_idx = np.setdiff1d(np.arange(len(labels)), train_idx)
    else:
        # An integer test size avoids the ceil() sklearn applies to fractions.
        n_test = int(round(test_fraction * len(labels)))
        train_idx, test_idx = train_test_split(
            np.arange(len(labels)), test_size=n_test, stratify=labels, random_state=seed
        )
    return DataSplit(
        name="digits",
        train_images=images[train_idx],
        train_labels=labels[train_idx],
        test_images=images[test_idx],
        test_labels=labels[test_idx],
        label_names=tuple(str(i) for i in range(10)),
    )
