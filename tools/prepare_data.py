#!/usr/bin/env python3
"""Convert CIFAR-10/100 or the bundled digits to Caffe LMDBs: see pyirg.prepare.

The same code as ``pyirg prepare-data`` (pyirg/cli.py), runnable from a checkout.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pyirg.cli import tool

tool("prepare-data")
