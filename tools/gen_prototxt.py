#!/usr/bin/env python3
"""Write the project's prototxts (see pyirg.gen); no arguments: the reference set."""

from __future__ import annotations

import sys
from pathlib import Path

try:
    from pyirg.gen import main
except ImportError:  # run from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from pyirg.gen import main

if __name__ == "__main__":
    sys.exit(main())
