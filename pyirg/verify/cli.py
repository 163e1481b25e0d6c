"""``python tools/verify.py`` / ``pyirg verify``: run the comparisons, print, exit status.

Quick mode (default, a few seconds): all 12 settings of both IRG layers on random inputs,
the hard cases for three settings, both REFILLED layers in every setting on every case,
and each method's net once with the default setting. ``--full``: every setting x case,
two more random draws of the REFILLED cases, and every setting of every method's net plus
16x16 images.

Exit status: 0 when every row passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from pyirg.options import ArgumentParser
from pyirg.verify.report import format_table, write_json


def _seed(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """``verify``'s options."""
    p = ArgumentParser(
        prog="verify.py",
        description="Compare the Caffe IRG layers (with a NumPy float64 implementation too), "
        "the REFILLED loss layers and the distillation nets with the PyTorch reference; "
        "exit 1 on any mismatch.",
    )
    p.add_argument("--full", action="store_true", help="every mode x case (else a subset)")
    p.add_argument("--json", metavar="OUT", help="also write the rows as JSON to OUT")
    p.add_argument("--no-nets", action="store_true", help="skip the whole-net comparisons")
    p.add_argument(
        "--no-refilled",
        action="store_true",
        help="skip the REFILLED layers (TripletRelationLoss, LocalCenterKDLoss), e.g. on a "
        "Caffe build without them (else each missing layer is a FAIL row)",
    )
    p.add_argument("--seed", type=_seed, default=0, help="seed of the random inputs (>= 0)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparisons, print the table; 0 when every row passes, else 1."""
    args = build_parser().parse_args(argv)
    if args.json:
        target = Path(args.json)
        if target.is_dir() or not target.parent.is_dir():
            raise ValueError(f"--json {target}: not a file in an existing folder")
    start = time.perf_counter()
    # Imported once the options are known good: they load pycaffe, which --help and a
    # refused option do not need.
    from pyirg.verify.layer_compare import compare_layers
    from pyirg.verify.net_compare import compare_nets
    from pyirg.verify.refilled_compare import compare_refilled

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: extra threads only contend (10x slower on 2 cores)
    try:
        rows = compare_layers(args.full, args.seed)
        if not args.no_refilled:
            rows.extend(compare_refilled(args.full, args.seed))
        if not args.no_nets:
            rows.extend(compare_nets(args.full, args.seed))
    finally:
        torch.set_num_threads(threads)
    failed = [r for r in rows if not r.passed]
    print(format_table(rows))
    elapsed = time.perf_counter() - start
    print(
        f"\n{len(rows)} comparisons, {len(failed)} failed "
        f"({'full' if args.full else 'quick'} mode, {elapsed:.1f} s)"
    )
    if args.json:
        write_json(args.json, rows)
    if failed:
        print("FAIL: " + "; ".join(f"{r.layer} {r.mode} {r.dtype} {r.case}" for r in failed[:10]))
        return 1
    print("PASS")
    return 0
