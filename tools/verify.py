#!/usr/bin/env python3
"""Compare the Caffe IRG layers and distillation nets with the PyTorch reference.

Thin wrapper around :func:`pyirg.verify.main`; see that module for what is compared.
Usage: python tools/verify.py [--full] [--json OUT] [--no-nets] [--seed S]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pyirg.verify import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
