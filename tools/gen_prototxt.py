#!/usr/bin/env python3
"""Write the project's prototxts (see pyirg.gen); no arguments: the reference set.

The same code as ``pyirg gen`` (pyirg/cli.py), runnable from a checkout.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pyirg.cli import tool

tool("gen")
