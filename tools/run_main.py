#!/usr/bin/env python3
"""python tools/run_main.py: the digits distillation job (pyirg main), without set-up.

The same code as ``pyirg main`` (pyirg/cli.py), runnable from a checkout.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pyirg.cli import tool

tool("main")
