"""PyTorch CUDA autograd of the IRG layers' computation, timed as irg_gpu_bench times Caffe's.

Runs beside irg_gpu_bench in the portable GPU check. The computation is
pyirg's own PyTorch reference (``pyirg/torch/layers.py``, copied into the bundle
as ``python/irg_torch_layers.py``): float32, normalize MAX, squared, EXACT, on
the same N x C grid. Writes a TSV of milliseconds per forward+backward; exit 77
(nothing written) when torch or its CUDA device is missing.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path


def _layers():
    """The bundled copy of pyirg.torch.layers, imported by path (no pyirg here)."""
    path = Path(__file__).resolve().parent / "python" / "irg_torch_layers.py"
    spec = importlib.util.spec_from_file_location("irg_torch_layers", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def time_ms(torch, step, budget_ms: float = 200.0) -> float:
    """Mean ms of ``step`` with CUDA events after a warm-up (3 to 200 repetitions)."""
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    step()
    start.record()
    step()
    stop.record()
    stop.synchronize()
    reps = max(3, min(200, int(budget_ms / max(start.elapsed_time(stop), 1e-3))))
    start.record()
    for _ in range(reps):
        step()
    stop.record()
    stop.synchronize()
    return start.elapsed_time(stop) / reps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="TSV to write")
    parser.add_argument("--ns", default="64,256,1024,4096")
    parser.add_argument("--cs", default="64,512,2048")
    args = parser.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("torch_bench: no torch here: PyTorch times not measured")
        return 77
    if not torch.cuda.is_available():
        print(f"torch_bench: torch {torch.__version__} sees no CUDA device: not measured")
        return 77
    layers = _layers()
    rows = ["layer\tn\tc\tms"]
    for name in ("BatchEuclideanMap", "BatchEuclideanVector"):
        for n in map(int, args.ns.split(",")):
            for c in map(int, args.cs.split(",")):
                x = torch.randn(n, c, device="cuda", requires_grad=True)
                y = torch.randn(n, c, device="cuda", requires_grad=True)
                g = torch.randn((n, n) if name == "BatchEuclideanMap" else (n,), device="cuda")

                def step(name=name, x=x, y=y, g=g) -> None:
                    x.grad = y.grad = None
                    if name == "BatchEuclideanMap":
                        out = layers.batch_euclidean_map(x)
                    else:
                        out = layers.batch_euclidean_vector(x, y)
                    out.backward(g)

                rows.append(f"{name}\t{n}\t{c}\t{time_ms(torch, step):.6f}")
    args.out.write_text("\n".join(rows) + "\n")
    device = torch.cuda.get_device_name()
    print(f"torch_bench: torch {torch.__version__} (CUDA {torch.version.cuda}) on {device}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
