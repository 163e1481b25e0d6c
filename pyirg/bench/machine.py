"""Where the numbers come from: CPU, cores, memory, load, versions, BLAS and threads.

Why: timings from a small shared machine are meaningless without the machine, its load
and the libraries that produced them, so every result carries them.
"""

from __future__ import annotations

import os
import platform
from typing import Any

import numpy as np

from pyirg.bench.blas import OpenBLAS


def machine_info(blas: OpenBLAS) -> dict[str, Any]:
    """Where the numbers come from: CPU, cores, memory, load, versions, BLAS and threads."""
    import caffe
    import matplotlib
    import torch

    def first(path: str, key: str) -> str | None:
        try:
            with open(path) as f:
                for line in f:
                    if line.startswith(key):
                        return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return None

    env = {
        k: v for k, v in os.environ.items() if k.startswith(("OPENBLAS_", "OMP_", "MKL_", "GOTO"))
    }
    return {
        "cpu_model": first("/proc/cpuinfo", "model name"),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "mem_total": first("/proc/meminfo", "MemTotal"),
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
        "env": env,
        "loadavg_start": os.getloadavg(),
    }
