#!/usr/bin/env python
"""Convert CIFAR-10/100 or the bundled digits to Caffe LMDBs: see pyirg.prepare."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyirg.prepare import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
