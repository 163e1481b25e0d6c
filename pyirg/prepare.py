"""``prepare-data``: convert CIFAR-10/100 or CUB-200-2011 archives, or the bundled digits,
to Caffe LMDBs.

Examples::

    python tools/prepare_data.py cifar10 ~/cifar-10-python.tar.gz data/cifar10
    python tools/prepare_data.py cifar100 ~/cifar-100-python.tar.gz data/c100 --labels coarse
    python tools/prepare_data.py cub200 ~/CUB_200_2011.tgz data/cub200
    python tools/prepare_data.py digits data/digits --seed 0

Nothing is downloaded: the CIFAR or CUB archive (or its extracted directory) must
be given.  CUB-200 and digits always write the ``.npy`` arrays too (the Input-fed nets
of ``pyirg refilled`` read them).  See :mod:`pyirg.data.writer` for the output layout;
the padded train LMDB and ``mean_pad.binaryproto`` serve the authors' random-crop
training setup.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pyirg.cli import one_line_error
from pyirg.data.cifar import CIFAR_VARIANTS, load_cifar
from pyirg.data.core import DATASETS, DataError, DataSplit
from pyirg.data.cub import CUB_SIZE, load_cub200
from pyirg.data.digits import DIGITS_TEST_FRACTION, load_digits_split
from pyirg.data.writer import write_dataset
from pyirg.options import ArgumentParser


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="prepare_data",
        description="Convert a data set to Caffe LMDBs and mean files.",
    )
    sub = parser.add_subparsers(dest="dataset", required=True)

    def add(dataset: str, help: str, archive: str | None = None) -> argparse.ArgumentParser:
        """A data set's subcommand: its archive (if any), then the options all share."""
        p = sub.add_parser(dataset, help=help)
        if archive is not None:
            p.add_argument("archive", type=Path, help=archive)
        p.add_argument("out_dir", type=Path, help="output directory (created atomically)")
        p.add_argument(
            "--pad",
            type=int,
            default=DATASETS[dataset].pad,
            help="zero padding of the padded train LMDB (0 = none)",
        )
        p.add_argument("--overwrite", action="store_true", help="replace an existing out_dir")
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        return p

    for name in CIFAR_VARIANTS:
        p = add(
            name,
            f"{name} from the official Python archive",
            "the .tar.gz archive or its extracted directory",
        )
        if name == "cifar100":
            p.add_argument(
                "--labels", choices=("fine", "coarse"), default="fine", help="which labels"
            )
        p.add_argument("--npy", action="store_true", help="also write the arrays as .npy")
    p = add(
        "cub200",
        "CUB-200-2011 from the official archive (224x224 centre crops, .npy included)",
        "CUB_200_2011.tgz or its extracted folder",
    )
    p.add_argument(
        "--size",
        type=int,
        default=CUB_SIZE,
        help="side of the square images: shorter side resized to it, centre crop "
        "(pyirg refilled --dataset cub200 expects 224)",
    )
    p = add("digits", "scikit-learn's bundled 8x8 digits (no download)")
    p.add_argument(
        "--test-fraction",
        type=float,
        default=DIGITS_TEST_FRACTION,
        help="share of the 1797 images held out for testing (797/1797)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the stratified split")
    return parser


def load_split(args: argparse.Namespace) -> DataSplit:
    if args.dataset == "digits":
        return load_digits_split(args.test_fraction, seed=args.seed)
    if args.dataset == "cub200":
        return load_cub200(args.archive, size=args.size, progress=not args.quiet)
    return load_cifar(args.archive, args.dataset, labels=getattr(args, "labels", "fine"))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        split = load_split(args)
        out = write_dataset(
            split,
            args.out_dir,
            pad=args.pad,
            write_npy=args.dataset in ("digits", "cub200") or args.npy,
            overwrite=args.overwrite,
            progress=not args.quiet,
        )
    except (DataError, FileExistsError, ValueError) as e:
        return one_line_error("prepare_data", e)
    print(
        f"{split.name}: {len(split.train_labels)} train / {len(split.test_labels)} test images "
        f"{'x'.join(map(str, split.image_shape))}, {split.num_classes} classes -> {out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
