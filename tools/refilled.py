#!/usr/bin/env python3
"""REFILLED distillation in two stages through pycaffe: see pyirg.two_stage.

The same code as ``pyirg refilled`` (pyirg/cli.py), runnable from a checkout.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pyirg.cli import tool

tool("refilled")
