#!/usr/bin/env python
"""Train a Caffe net or an IRG distillation net through pycaffe: see pyirg.train."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyirg.train import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
