"""The command line: ``python tools/bench.py`` / ``pyirg bench``, and the run that ties it all.

Why here and not in each part: the order matters. Caffe is imported first so the bound
uses its OpenBLAS, both libraries get the same thread count, and every part writes into
one bench.json that the markdown and the plot are rebuilt from.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

from pyirg.bench.blas import OpenBLAS, compare_blas, conv_gemms, find_caffe_openblas, find_mkl
from pyirg.bench.config import FULL_C, FULL_N, QUICK_C, QUICK_N, TRAIN_METHODS, Settings
from pyirg.bench.console import (
    print_memory,
    print_profile,
    print_tables,
    print_targets,
    print_training,
)
from pyirg.bench.layers import NetFiles, bench_layer, ratios
from pyirg.bench.machine import machine_info
from pyirg.bench.memory import memory_rows
from pyirg.bench.report import blas_markdown, markdown, plot, to_json
from pyirg.bench.targets import evaluate_targets, training_targets
from pyirg.bench.training import bench_training
from pyirg.options import ArgumentParser, HelpFormatter


def settings(args: argparse.Namespace) -> Settings:
    """Full or quick sizes, then the options that narrow them: one place decides what runs."""
    if args.quick:
        s = Settings(
            QUICK_N,
            QUICK_C,
            reps=3,
            warmup=1,
            min_sample_s=0.002,
            train_methods=("IRG",),
            train_batch=16,
            train_warmup=1,
            train_reps=2,
            attribution_reps=1,
            quick=True,
        )
    else:
        s = Settings(
            FULL_N,
            FULL_C,
            reps=15,
            warmup=3,
            min_sample_s=0.02,
            train_methods=TRAIN_METHODS,
            train_batch=64,
            train_warmup=2,
            train_reps=12,
            attribution_reps=5,
        )
    if args.reps:
        s.reps = args.reps
    if args.skip_train:
        s.train_methods = ()
    if args.train_only or args.blas_only:
        s.ns, s.cs = (), ()
    if args.blas_only:
        s.train_methods = ()
    s.transform_pool = args.transform_pool
    return s


def build_parser() -> argparse.ArgumentParser:
    """``bench``'s options."""
    p = ArgumentParser(
        prog="bench.py",
        description="Benchmark the IRG Caffe layers against PyTorch, the GEMM bound, and "
        "their share of a distillation training iteration.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="a few sizes, seconds (for tests)")
    p.add_argument(
        "--out",
        type=Path,
        default=Path("out/bench"),
        help="folder for bench.json and bench.png",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="BLAS threads for Caffe's OpenBLAS and PyTorch (else OpenBLAS's "
        "own count: OPENBLAS_NUM_THREADS or the cores)",
    )
    p.add_argument(
        "--reps", type=int, default=None, help="repetitions per size (else 15; 3 with --quick)"
    )
    p.add_argument(
        "--skip-train", action="store_true", help="leave out the training-iteration comparison"
    )
    p.add_argument(
        "--train-only", action="store_true", help="only the training-iteration comparison"
    )
    p.add_argument(
        "--blas-only",
        action="store_true",
        help="only the BLAS comparison: Caffe's convolution GEMMs with every OpenBLAS "
        "kernel this CPU runs, and MKL where `pip install mkl` put it",
    )
    p.add_argument(
        "--transform-pool",
        choices=("Pooling", "Reduction"),
        default="Pooling",
        help="how the IRG-t nets average block outputs (the authors' Pooling, or Reduction)",
    )
    return p


def blas_choice(blas: OpenBLAS, reps: int) -> list[dict]:
    """Caffe's ResNet-20 convolution GEMMs timed with each OpenBLAS kernel this CPU can run
    (each in its own process: the kernel is fixed at load) and with MKL if installed."""
    from pyirg.arch import cifar_resnet
    from pyirg.blas import CORETYPE_ENV, KERNEL_TIERS, read_cpuinfo

    vendor, _, flags = read_cpuinfo()
    in_use = blas.info()["corename"]
    kernels = [
        name
        for name, needs, only in KERNEL_TIERS
        if needs <= flags and (only is None or only == vendor)
    ]
    libraries = [(blas.path, {CORETYPE_ENV: k}) for k in dict.fromkeys([in_use, *kernels])]
    mkl = find_mkl()
    if mkl:
        libraries.append((mkl, {"MKL_NUM_THREADS": "1"}))
    rows = compare_blas(libraries, conv_gemms(cifar_resnet(20, 1.0, 10, 3), 32), reps)
    for row in rows:
        row["chosen"] = row.get("library") == f"OpenBLAS {in_use}"
    return rows


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """The options, checked before Caffe and PyTorch load so a typo fails fast."""
    p = build_parser()
    args = p.parse_args(argv)
    exclusive = [f for f in ("skip_train", "train_only", "blas_only") if getattr(args, f)]
    if len(exclusive) > 1:
        p.error(" and ".join("--" + f.replace("_", "-") for f in exclusive) + " exclude each other")
    if args.blas_only and args.transform_pool != "Pooling":
        p.error("--transform-pool applies to the training comparison, not --blas-only")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be >= 1")
    if args.reps is not None and args.reps < 1:
        p.error("--reps must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Caffe first (its OpenBLAS is the bound), one thread count for both, then every part."""
    args = parse(argv)
    import caffe  # first: its OpenBLAS is the one the bound must use

    caffe.set_mode_cpu()
    import torch

    s = settings(args)
    blas = OpenBLAS(find_caffe_openblas())
    if args.threads is not None:
        blas.set_threads(args.threads)
    threads = blas.threads
    torch.set_num_threads(threads)
    meta = machine_info(blas)
    print(
        f"CPU {meta['cpu_model']} ({meta['cpus_usable']} usable of {meta['cpu_count']}); "
        f"OpenBLAS {meta['openblas']['corename']} x{threads} threads "
        f"({meta['openblas']['path']}); torch {torch.__version__} x{torch.get_num_threads()} "
        f"({meta['torch_blas']}); load {meta['loadavg_start']}"
    )
    files = NetFiles()
    started = time.time()
    try:
        rows = []
        for layer in ("map", "vector"):
            for c in s.cs:
                for n in s.ns:
                    row = bench_layer(layer, n, c, s, blas, files, seed=n * 7919 + c)
                    row["ratios"] = ratios(row)
                    rows.append(row)
                    print(
                        f"  {layer:>6} N={n:>4} C={c:>5}: caffe "
                        f"{row['timings']['caffe'].median * 1e3:.3f} ms, "
                        f"/torch {row['ratios']['vs_torch']:.2f}, "
                        f"/bound {row['ratios']['vs_bound']:.2f}",
                        flush=True,
                    )
        memory = memory_rows(s.ns, files)
        train = []
        for method in s.train_methods:
            print(f"  training: {method} ...", flush=True)
            train.append(bench_training(method, s, files))
    finally:
        files.close()
    blas_rows = []
    if not args.train_only:  # --train-only asks for the training comparison alone
        print("  BLAS for Caffe's convolutions ...", flush=True)
        blas_rows = blas_choice(blas, reps=3 if s.quick else 7)
    targets = evaluate_targets(rows)
    targets += training_targets(train)
    print_tables(rows)
    print_targets(targets)
    print_profile(rows, targets)
    print_memory(memory)
    print_training(train)
    print("\n".join(blas_markdown(blas_rows)))
    meta["loadavg_end"] = os.getloadavg()
    meta["wall_s"] = time.time() - started
    args.out.mkdir(parents=True, exist_ok=True)
    result = {
        "meta": meta,
        "settings": {k: getattr(s, k) for k in Settings.__dataclass_fields__},
        "threads": threads,
        "layers": to_json(rows),
        "targets": targets,
        "memory": memory,
        "training": train,
        "blas_choice": blas_rows,
    }
    (args.out / "bench.json").write_text(json.dumps(result, indent=1))
    (args.out / "bench.md").write_text(markdown(json.loads(json.dumps(result))))
    if rows:
        plot(rows, args.out / "bench.png")
    print(f"\nwrote bench.json, bench.md, bench.png in {args.out} ({meta['wall_s']:.0f} s)")
    return 0
