#!/usr/bin/env python3
"""Train a Caffe net or an IRG distillation net through pycaffe: see pyirg.train.

The same code as ``pyirg train`` (pyirg/cli.py), runnable from a checkout.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pyirg.cli import tool

tool("train")
