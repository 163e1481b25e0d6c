#!/usr/bin/env python3
"""REFILLED on the embedded digits, cross-task and standard: see pyirg.refilled_demo.

The same code as ``pyirg refilled-demo`` (pyirg/cli.py), runnable from a checkout.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pyirg.cli import tool

tool("refilled-demo")
