#!/usr/bin/env python3
"""Pre-flight checks of Caffe nets (see pyirg.check): exit 1 on any error.

The same code as ``pyirg check`` (pyirg/cli.py), runnable from a checkout.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pyirg.cli import tool

tool("check")
