#!/usr/bin/env python3
"""Compare the Caffe IRG layers and distillation nets with the PyTorch reference.

The same code as ``pyirg verify`` (pyirg/cli.py), runnable from a checkout.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pyirg.cli import tool

tool("verify")
