#!/usr/bin/env python3
"""Export a trained student (deploy prototxt + caffemodel) to ONNX, checked against Caffe.

Thin wrapper around :func:`pyirg.export.main`.
Usage: python tools/export_onnx.py DEPLOY.prototxt WEIGHTS.caffemodel OUT.onnx
       [--prefix stu_] [--batch N] [--input X.npy] [--atol 1e-4] [--opset 17]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pyirg.export import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
