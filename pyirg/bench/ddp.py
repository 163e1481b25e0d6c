"""One PyTorch distillation iteration on 1 and 2 processes, and the IRG graph gathers' share.

Why: ``IRGLoss(graph="global")`` relates the instances of every rank, so each rank
builds a graph of (ranks x B)^2 edges per edge layer instead of B^2, and gathers every
compared feature (and all-reduces its gradient) once per iteration. This measures what
that costs beside ``graph="local"``: ``pyirg torch-train`` (IRG, ResNet-20 -> ResNet-20
x0.5 on the embedded digits, a random teacher) under torchrun with the gloo backend, the
median over the iterations after the first two of rank 0's iteration time and of the
time inside the gathers (pyirg.torch.distributed.GATHER_SECONDS).

    pyirg bench-ddp [--batch 64] [--iters 12] [--out out/bench_ddp]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pyirg.bench.report import table
from pyirg.options import ArgumentParser

#: (processes, graph) measured; one process has one graph whatever the mode.
CASES = ((1, "local"), (2, "local"), (2, "global"))


def _teacher(folder: Path) -> Path:
    """A random ResNet-20 teacher for the digits, as a .caffemodel."""
    import torch

    from pyirg.arch import cifar_resnet
    from pyirg.torch.caffemodel import save_caffemodel
    from pyirg.torch.resnet import CifarResNet

    torch.manual_seed(0)
    path = folder / "teacher.caffemodel"
    save_caffemodel(CifarResNet(cifar_resnet(20, 1.0, 10, 1)), path)
    return path


def measure(procs: int, graph: str, batch: int, iters: int, teacher: Path, out: Path) -> dict:
    """Median iteration and gather times of one torch-train run (rank 0's metrics)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={procs}", "-m", "pyirg", "torch-train", "--out", str(out),
           "--teacher-weights", str(teacher), "--iters", str(iters), "--batch", str(batch),
           "--graph", graph, "--test-interval", "0", "--snapshot", "0",
           "--no-progress"]  # fmt: skip
    env = dict(os.environ, GLOG_minloglevel="2", OMP_NUM_THREADS=os.environ.get(
        "OMP_NUM_THREADS", "1"))  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(
            f"torch-train failed ({procs} processes, {graph}):\n{proc.stderr[-2000:]}"
        )
    rows = json.loads((out / "metrics.json").read_text())[2:]
    iter_ms = statistics.median(r["iter_ms"] for r in rows)
    gather_ms = statistics.median(r["gather_ms"] for r in rows)
    n = batch * (procs if graph == "global" else 1)
    return {
        "processes": procs,
        "graph": graph,
        "batch_per_rank": batch,
        "graph_instances": n,
        "edges_per_layer_per_rank": n * n,
        "iter_ms": iter_ms,
        "gather_ms": gather_ms,
        "gather_share": gather_ms / iter_ms if iter_ms else 0.0,
        "iterations_timed": len(rows),
    }


def markdown(results: list[dict[str, Any]], machine: dict[str, Any]) -> str:
    """bench_ddp.md: the machine line, the table, what the two graphs cost."""
    head = ["processes", "graph", "B per rank", "graph N", "edges per layer per rank"]
    head += ["iteration ms", "in gathers ms", "gathers' share"]
    rows = [
        [r["processes"], r["graph"], r["batch_per_rank"], r["graph_instances"]]
        + [r["edges_per_layer_per_rank"], f"{r['iter_ms']:.1f}", f"{r['gather_ms']:.2f}"]
        + [f"{r['gather_share']:.1%}"]
        for r in results
    ]
    return "\n".join(
        [
            f"PyTorch distillation iteration, IRG ResNet-20 -> ResNet-20 x0.5, digits, gloo; "
            f"{machine['cpu']}, {machine['cores']} cores, OMP_NUM_THREADS={machine['omp']}, "
            f"torch {machine['torch']}, {machine['date']}",
            "",
            *table(head, "rlrrrrrr", rows),
            "",
            "With K ranks, graph=global builds (K x B)^2 edges per edge layer on every rank "
            "(K^2 times local's B^2) and gathers each compared feature once per iteration; "
            "graph=local stays at B^2 with no gathers.",
        ]
    )


def build_parser() -> argparse.ArgumentParser:
    """``bench-ddp``'s options."""
    parser = ArgumentParser(prog="pyirg bench-ddp", description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64, help="instances per rank")
    parser.add_argument("--iters", type=int, default=12, help="iterations per run (2 warm-up)")
    parser.add_argument("--out", type=Path, default=Path("out/bench_ddp"), help="results folder")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``pyirg bench-ddp``: measure, print the table, write bench_ddp.{json,md}."""
    parser = build_parser()
    args: argparse.Namespace = parser.parse_args(argv)
    if args.batch < 1 or args.iters < 3:
        parser.error("--batch must be >= 1 and --iters >= 3 (two are warm-up)")
    import torch

    args.out.mkdir(parents=True, exist_ok=True)
    from pyirg.blas import read_cpuinfo

    machine = {
        "cpu": read_cpuinfo()[1] or platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "omp": os.environ.get("OMP_NUM_THREADS", "1"),
        "torch": torch.__version__,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
    }
    with tempfile.TemporaryDirectory() as tmp:
        teacher = _teacher(Path(tmp))
        results = [
            measure(p, g, args.batch, args.iters, teacher, Path(tmp) / f"{p}-{g}") for p, g in CASES
        ]
    report = markdown(results, machine)
    (args.out / "bench_ddp.json").write_text(
        json.dumps({"machine": machine, "results": results}, indent=1) + "\n"
    )
    (args.out / "bench_ddp.md").write_text(report + "\n")
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
