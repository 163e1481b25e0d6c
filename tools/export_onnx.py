#!/usr/bin/env python3
"""Export a trained student (deploy prototxt + caffemodel) to ONNX, checked against Caffe.

The same code as ``pyirg export-onnx`` (pyirg/cli.py), runnable from a checkout.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pyirg.cli import tool

tool("export-onnx")
