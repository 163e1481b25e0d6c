"""The command line: ``python tools/bench.py`` / ``pyirg bench``, and the run that ties it all.

Why here and not in each part: the order matters. Caffe is imported first so the bound
uses its OpenBLAS, both libraries get the same thread count, and every part writes into
one bench.json that the report and the plot are rendered from.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pyirg.bench.blas import Cblas, blas_choice, caffe_cblas
from pyirg.bench.layers import VARIANTS, bench_layer, bench_relation, evaluate_targets, memory_rows
from pyirg.bench.report import plot, render
from pyirg.bench.timing import QUICK, Settings
from pyirg.bench.training import bench_stage, bench_training
from pyirg.blas import kernel_line, read_cpuinfo
from pyirg.options import ArgumentParser


def build_parser() -> argparse.ArgumentParser:
    """``bench``'s options."""
    p = ArgumentParser(
        prog="bench.py",
        description="Benchmark the IRG Caffe layers against PyTorch, the GEMM bound, and "
        "their share of a distillation training iteration; and the REFILLED loss layers "
        "against their PyTorch reference and their share of a stage iteration.",
    )
    p.add_argument("--quick", action="store_true", help="a few sizes, seconds (for tests)")
    p.add_argument(
        "--out", type=Path, default=Path("out/bench"), help="folder for bench.json and bench.png"
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
        "--skip-refilled",
        action="store_true",
        help="leave out the REFILLED layers (TripletRelationLoss, LocalCenterKDLoss) and "
        "their stage iterations",
    )
    p.add_argument(
        "--refilled-only",
        action="store_true",
        help="only the REFILLED layers: every mode at N = 64..512 (D = D' = 128, 100 "
        "classes; --quick: N = 64) against pyirg.torch.refilled, and their share of a "
        "stage-1 and stage-2 iteration (WRN-40-2 -> WRN-16-2, batch 64; --quick: "
        "WRN-10-1 -> WRN-10-1, batch 8)",
    )
    p.add_argument(
        "--transform-pool",
        choices=("Pooling", "Reduction"),
        default="Pooling",
        help="how the IRG-t nets average block outputs (the authors' Pooling, or Reduction)",
    )
    return p


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """The options, checked before Caffe and PyTorch load so a typo fails fast."""
    p = build_parser()
    args = p.parse_args(argv)
    modes = ("skip_train", "train_only", "blas_only", "refilled_only")
    exclusive = [f for f in modes if getattr(args, f)]
    if len(exclusive) > 1:
        p.error(" and ".join("--" + f.replace("_", "-") for f in exclusive) + " exclude each other")
    if (args.blas_only or args.refilled_only) and args.transform_pool != "Pooling":
        p.error("--transform-pool applies to the training comparison of the IRG nets only")
    for other in ("refilled_only", "blas_only"):
        if args.skip_refilled and getattr(args, other):
            p.error(f"--skip-refilled and --{other.replace('_', '-')} exclude each other")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be >= 1")
    if args.reps is not None and args.reps < 1:
        p.error("--reps must be >= 1")
    try:  # before minutes of measuring, not after
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        p.error(f"--out {args.out}: {e.strerror}")
    return args


def settings(args: argparse.Namespace) -> Settings:
    """Full or quick sizes, then the options that narrow them: one place decides what runs."""
    s = dataclasses.replace(QUICK if args.quick else Settings(), transform_pool=args.transform_pool)
    if args.reps:
        s.reps = args.reps
    if args.skip_train or args.blas_only or args.refilled_only:
        s.train_methods = ()
    if args.train_only or args.blas_only or args.refilled_only:
        s.ns, s.cs = (), ()
    if args.train_only or args.blas_only or args.skip_refilled:
        s.refilled_ns = ()
    if args.skip_train or args.blas_only or args.skip_refilled:
        s.stages = ()
    return s


def _mem_total() -> str | None:
    try:
        lines = Path("/proc/meminfo").read_text().splitlines()
    except OSError:
        return None
    return next((x.split(":", 1)[1].strip() for x in lines if x.startswith("MemTotal")), None)


def machine_info(blas: Cblas) -> dict[str, Any]:
    """Where the numbers come from: timings from a small shared machine are meaningless
    without the machine, its load and the libraries that produced them."""
    import caffe
    import matplotlib
    import torch

    prefixes = ("OPENBLAS_", "OMP_", "MKL_", "GOTO")
    return {
        "cpu_model": read_cpuinfo()[1] or None,
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "mem_total": _mem_total(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {
            "caffe": getattr(caffe, "__version__", "?"),
            "numpy": np.__version__,
            "torch": torch.__version__,
            "matplotlib": matplotlib.__version__,
        },
        "openblas": blas.info(),
        "torch_threads": torch.get_num_threads(),
        "torch_blas": "MKL" if torch.backends.mkl.is_available() else "other",
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "env": {k: v for k, v in os.environ.items() if k.startswith(prefixes)},
        "loadavg_start": os.getloadavg(),
    }


def measure_all(s: Settings, blas: Cblas) -> dict[str, Any]:
    """The layer sweep, the memory probe and the training comparison, in that order; one
    progress line per size, since a full run takes minutes."""
    layers = []
    for layer in ("map", "vector"):
        for c in s.cs:
            for n in s.ns:
                row = bench_layer(layer, n, c, s, blas, seed=n * 7919 + c)
                layers.append(row)
                print(
                    f"  {layer:>6} N={n:>4} C={c:>5}: caffe "
                    f"{row['timings']['caffe']['median_ms']:.3f} ms, "
                    f"/torch {row['ratios']['vs_torch']:.2f}, "
                    f"/bound {row['ratios']['vs_bound']:.2f}",
                    flush=True,
                )
    relation = []
    for layer, mode in VARIANTS:
        for n in s.refilled_ns:
            row = bench_relation(layer, mode, n, s, seed=n * 7919 + len(relation))
            relation.append(row)
            print(
                f"  {layer} {mode:>7} N={n:>4}: caffe "
                f"{row['timings']['caffe']['median_ms']:.3f} ms, /torch {row['vs_torch']:.3f}",
                flush=True,
            )
    memory = memory_rows(s.ns)
    training = []
    for method in s.train_methods:
        print(f"  training: {method} ...", flush=True)
        training.append(bench_training(method, s))
    stages = []
    for stage in s.stages:
        print(f"  REFILLED stage {stage} iteration ...", flush=True)
        stages.append(bench_stage(stage, s))
    targets = evaluate_targets(layers, training, stages)
    return {
        "layers": layers,
        "targets": targets,
        "memory": memory,
        "training": training,
        "refilled": relation,
        "refilled_stages": stages,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Caffe first (its OpenBLAS is the bound), one thread count for both, then every part."""
    args = parse(argv)
    import caffe  # first: its OpenBLAS is the one the bound must use

    caffe.set_mode_cpu()
    import torch

    s = settings(args)
    blas = caffe_cblas()
    if args.threads is not None:
        blas.limit_threads(args.threads)
    threads = blas.info()["threads"]
    torch.set_num_threads(threads)
    meta = machine_info(blas)
    print(
        f"{kernel_line()}; torch {torch.__version__} x{torch.get_num_threads()} "
        f"({meta['torch_blas']}); load {meta['loadavg_start']}"
    )
    started = time.time()
    parts = measure_all(s, blas)
    blas_rows = []
    if not (args.train_only or args.refilled_only):  # those ask for one part alone
        print("  BLAS for Caffe's convolutions ...", flush=True)
        blas_rows = blas_choice(blas, reps=3 if s.quick else 7)
    meta["loadavg_end"] = os.getloadavg()
    meta["wall_s"] = time.time() - started
    result = {"meta": meta, "settings": dataclasses.asdict(s), "threads": threads}
    result = json.loads(json.dumps({**result, **parts, "blas_choice": blas_rows}))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(result, indent=1))
    (args.out / "bench.md").write_text(render(result))
    print("\n" + render(result, profile=True), flush=True)
    if result["layers"]:
        plot(result["layers"], args.out / "bench.png")
    print(f"wrote bench.json, bench.md, bench.png in {args.out} ({meta['wall_s']:.0f} s)")
    return 0
