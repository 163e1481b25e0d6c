"""How much a run measures (``Settings``) and how each sample is taken (``measure``).

Why one module: the layer sweep, the training comparison and the command line share
both, and the repetition counts only mean something with the way a sample is timed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MAX_INNER = 20000
# Seconds for a thread pool to go idle after its last call (see measure): OpenBLAS's
# workers spin ~2^28 cycles (0.07-0.13 s at 2-4 GHz), libgomp's some ms.
SETTLE_S = {"openblas": 0.2, "torch": 0.05}


@dataclass
class Settings:
    """How much to run: sizes, repetitions, and the training comparison. The defaults are
    the published run (docs/benchmarks.md); ``QUICK`` is the seconds-long one tests run."""

    ns: tuple[int, ...] = (64, 128, 256, 512)
    cs: tuple[int, ...] = (64, 256, 2048)
    reps: int = 15
    warmup: int = 3
    min_sample_s: float = 0.02
    train_methods: tuple[str, ...] = ("IRG", "IRG-t", "MTK")
    train_batch: int = 64
    train_warmup: int = 2
    train_reps: int = 12
    attribution_reps: int = 5
    settle: dict[str, float] = field(default_factory=lambda: dict(SETTLE_S))
    quick: bool = False
    transform_pool: str = "Pooling"
    #: REFILLED layers: batch sizes, and (student D, teacher D', classes K): WRN-16-2 and
    #: WRN-40-2 embeddings (128 both), CIFAR-100.
    refilled_ns: tuple[int, ...] = (64, 128, 256, 512)
    refilled_dims: tuple[int, int, int] = (128, 128, 100)
    #: The stage nets: ((teacher depth, widen), (student depth, widen)), batch, repetitions.
    stage_pair: tuple[tuple[int, int], tuple[int, int]] = ((40, 2), (16, 2))
    stage_batch: int = 64
    stage_reps: int = 5
    stages: tuple[int, ...] = (1, 2)


QUICK = Settings(
    ns=(64, 256),
    cs=(64, 256),
    reps=3,
    warmup=1,
    min_sample_s=0.002,
    train_methods=("IRG",),
    train_batch=16,
    train_warmup=1,
    train_reps=2,
    attribution_reps=1,
    quick=True,
    refilled_ns=(64,),
    stage_pair=((10, 1), (10, 1)),
    stage_batch=8,
    stage_reps=2,
)


@dataclass
class Timing:
    """Seconds per call, one sample per repetition (each the mean of ``inner`` calls)."""

    samples: list[float]
    inner: int = 1

    def q(self, p: float) -> float:
        return float(np.percentile(self.samples, p))

    @property
    def median(self) -> float:
        return self.q(50)

    def plus(self, other: Timing) -> Timing:
        """Repetition-wise sum: samples taken in the same repetition saw the same load."""
        return Timing([a + b for a, b in zip(self.samples, other.samples)], self.inner)

    def summary(self) -> dict[str, Any]:
        """What bench.json keeps of a timing: quartiles for the tables, every sample."""
        ms = [s * 1e3 for s in self.samples]
        return {
            "median_ms": self.median * 1e3,
            "q1_ms": self.q(25) * 1e3,
            "q3_ms": self.q(75) * 1e3,
            "min_ms": min(ms),
            "max_ms": max(ms),
            "inner": self.inner,
            "samples_ms": ms,
        }


def measure(
    fns: dict[str, Callable[[], object]],
    pools: dict[str, str],
    reps: int,
    min_sample_s: float,
    warmup: int,
    settle: dict[str, float],
) -> dict[str, Timing]:
    """Time every function ``reps`` times, interleaved, one sample of each per repetition.

    Interleaving puts every implementation under the same background load. But a thread
    pool that finds the other one (OpenBLAS's, PyTorch's libgomp) still spinning runs many
    times slower (docs/benchmarks.md, "Timing"), and no user runs both in one process: so
    functions are grouped by ``pools[name]``, each group runs after ``settle[previous
    pool]`` seconds of sleep and one untimed priming call, and the group order and the
    order inside a group rotate per repetition. Fast calls are repeated ``inner`` times
    so a sample lasts ``min_sample_s`` and timer resolution and jitter average out.
    """
    groups: dict[str, list[str]] = {}
    for name in fns:
        groups.setdefault(pools[name], []).append(name)
    order = list(groups)
    last: list[str | None] = [None]

    def enter(pool: str) -> None:
        if last[0] is not None and last[0] != pool:
            time.sleep(settle.get(last[0], 0.0))
        last[0] = pool

    inner = {}
    for pool in order:
        enter(pool)
        for name in groups[pool]:
            for _ in range(warmup):
                fns[name]()
            t0 = time.perf_counter()
            fns[name]()
            once = max(time.perf_counter() - t0, 1e-7)
            inner[name] = max(1, min(MAX_INNER, int(min_sample_s / once)))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for rep in range(reps):
        k = rep % len(order)
        for pool in order[k:] + order[:k]:
            enter(pool)
            j = rep % len(groups[pool])
            names = groups[pool][j:] + groups[pool][:j]
            fns[names[0]]()  # priming: wakes this pool, warms the caches after the sleep
            for name in names:
                fn, count = fns[name], inner[name]
                t0 = time.perf_counter()
                for _ in range(count):
                    fn()
                samples[name].append((time.perf_counter() - t0) / count)
    return {name: Timing(samples[name], inner[name]) for name in fns}
