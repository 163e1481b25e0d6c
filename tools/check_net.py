#!/usr/bin/env python3
"""Pre-flight checks of Caffe nets (see pyirg.check): exit 1 on any error."""

from __future__ import annotations

import sys
from pathlib import Path

try:
    from pyirg.check import main
except ImportError:  # run from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from pyirg.check import main

if __name__ == "__main__":
    sys.exit(main())
