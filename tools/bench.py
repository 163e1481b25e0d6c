#!/usr/bin/env python3
"""Benchmark the IRG layers against PyTorch and the GEMM bound: see pyirg.bench."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyirg.bench import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
