#!/usr/bin/env python3
"""A PyTorch distillation iteration on 1 and 2 processes: see pyirg.bench.ddp.

The same code as ``pyirg bench-ddp`` (pyirg/cli.py), runnable from a checkout.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pyirg.cli import tool

tool("bench-ddp")
