"""How much a run measures: the sizes, repetitions and settle times of full and quick runs.

Kept apart from the code that measures, so the layer sweep, the training comparison and
the command line agree on one ``Settings`` without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

FULL_N = (64, 128, 256, 512)
FULL_C = (64, 256, 2048)
QUICK_N = (64, 256)
QUICK_C = (64, 256)
TRAIN_METHODS = ("IRG", "IRG-t", "MTK")
# Seconds for a thread pool to go idle after its last call (see measure): OpenBLAS's
# workers spin ~2^28 cycles (0.07-0.13 s at 2-4 GHz), libgomp's some ms.
SETTLE_S = {"openblas": 0.2, "torch": 0.05}


@dataclass
class Settings:
    """How much to run: sizes, repetitions, and the training comparison."""

    ns: tuple[int, ...]
    cs: tuple[int, ...]
    reps: int
    warmup: int
    min_sample_s: float
    train_methods: tuple[str, ...]
    train_batch: int
    train_warmup: int
    train_reps: int
    attribution_reps: int
    settle: dict[str, float] = field(default_factory=lambda: dict(SETTLE_S))
    quick: bool = False
    transform_pool: str = "Pooling"
