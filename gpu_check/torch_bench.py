"""PyTorch CUDA autograd of the IRG layers' computation, timed as irg_gpu_bench times Caffe's.

Runs beside irg_gpu_bench in the portable GPU check. The computation is the one
the CPU benchmark times PyTorch in (``pyirg/bench/torch_forms.py``, copied into
the bundle as ``python/torch_forms.py``): the Gram form of the map (one addmm)
and the vector, each normalized by its maximum (MAX, squared, EXACT by autograd)
and followed by a EuclideanLoss, float32, on the same N x C grid. (pyirg's
reference, ``pyirg.torch.layers``, takes every pair's difference directly, which
needs N^2 x C memory: 137 GB at N = 4096, C = 2048.) Writes a TSV of
milliseconds per forward+backward; exit 77 (nothing written) when torch or its
CUDA device is missing.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path


def _forms():
    """The bundled copy of pyirg.bench.torch_forms, imported by path (no pyirg here)."""
    path = Path(__file__).resolve().parent / "python" / "torch_forms.py"
    spec = importlib.util.spec_from_file_location("torch_forms", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def time_ms(torch, step, device: str, budget_ms: float = 200.0) -> float:
    """Mean ms of ``step`` after a warm-up (3 to 200 repetitions): CUDA events on a GPU,
    the wall clock on the CPU (``--device cpu``, which lets this script be tested
    where there is no GPU)."""
    if device == "cpu":
        step()
        start = time.perf_counter()
        step()
        once = (time.perf_counter() - start) * 1e3
        reps = max(3, min(200, int(budget_ms / max(once, 1e-3))))
        start = time.perf_counter()
        for _ in range(reps):
            step()
        return (time.perf_counter() - start) * 1e3 / reps
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    step()
    begin.record()
    step()
    end.record()
    end.synchronize()
    reps = max(3, min(200, int(budget_ms / max(begin.elapsed_time(end), 1e-3))))
    begin.record()
    for _ in range(reps):
        step()
    end.record()
    end.synchronize()
    return begin.elapsed_time(end) / reps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="TSV to write")
    parser.add_argument("--ns", default="64,256,1024,4096")
    parser.add_argument("--cs", default="64,512,2048")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    args = parser.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("torch_bench: no torch here: PyTorch times not measured")
        return 77
    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"torch_bench: torch {torch.__version__} sees no CUDA device: not measured")
        return 77
    forms = _forms()
    rows = ["layer\tn\tc\tms"]
    for name in ("BatchEuclideanMap", "BatchEuclideanVector"):
        for n in map(int, args.ns.split(",")):
            for c in map(int, args.cs.split(",")):
                x = torch.randn(n, c, device=args.device, requires_grad=True)
                if name == "BatchEuclideanMap":
                    target = torch.rand(n, n, device=args.device)
                    step = forms.torch_map(x, target, "gram")
                else:
                    y = torch.randn(n, c, device=args.device, requires_grad=True)
                    step = forms.torch_vector(x, y, torch.rand(n, device=args.device))
                rows.append(f"{name}\t{n}\t{c}\t{time_ms(torch, step, args.device):.6f}")
    args.out.write_text("\n".join(rows) + "\n")
    where = torch.cuda.get_device_name() if args.device == "cuda" else "the CPU"
    print(f"torch_bench: torch {torch.__version__} (CUDA {torch.version.cuda}) on {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
