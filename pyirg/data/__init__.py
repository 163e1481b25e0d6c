"""Data sets for the IRG experiments, as numpy arrays and as Caffe LMDBs.

- :func:`~pyirg.data.cifar.load_cifar` reads the official CIFAR-10/100 Python archives safely;
- :func:`~pyirg.data.cub.load_cub200` reads the official CUB-200-2011 archive into fixed-size
  centre crops, as safely;
- :func:`~pyirg.data.digits.load_digits_split` gives scikit-learn's bundled digits (no download);
- :func:`~pyirg.data.writer.write_dataset` writes train/test (and padded train) LMDBs and
  mean files;
- :func:`~pyirg.data.feed.array_batch_fn` feeds Input-fed nets deterministically per iteration,
  which is what makes resumed training reproduce an uninterrupted run.
"""
