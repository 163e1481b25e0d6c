#!/usr/bin/env python3
"""Benchmark the IRG layers against PyTorch and the GEMM bound: see pyirg.bench.

The same code as ``pyirg bench`` (pyirg/cli.py), runnable from a checkout.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pyirg.cli import tool

tool("bench")
