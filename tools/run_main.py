#!/usr/bin/env python3
"""python tools/run_main.py: the digits distillation job (pyirg main), without set-up."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pyirg.experiment import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
