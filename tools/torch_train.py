#!/usr/bin/env python3
"""Distillation training in PyTorch (torchrun for DDP): see pyirg.torch_train.

The same code as ``pyirg torch-train`` (pyirg/cli.py), runnable from a checkout.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pyirg.cli import tool

tool("torch-train")
