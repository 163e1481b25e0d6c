"""Interleaved timing that keeps OpenBLAS's and PyTorch's thread pools out of each other's way.

Why: the machines are small and shared, so only side-by-side samples are comparable, and
two thread pools spinning in one process slow each other down many times (see
``measure``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

MAX_INNER = 20000


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

    Interleaving puts every implementation under the same background load. But two thread
    pools share this process and its cores: OpenBLAS's workers spin for about 2^28 cycles
    (~0.1 s) after each call and libgomp's (PyTorch) for some ms, and a pool that finds
    the other one spinning runs many times slower (measured: a 1.3 ms PyTorch step takes
    75-115 ms within 0.1 s of a GEMM). No user runs both in one process, so each sample
    must see only its own pool: functions are grouped by ``pools[name]``, each group runs
    after ``settle[previous pool]`` seconds of sleep (the other pool gone idle) and one
    untimed priming call; the group order and the order inside a group rotate per
    repetition so none always runs first. Fast calls are repeated ``inner`` times per
    sample so a sample lasts ``min_sample_s`` and timer resolution and jitter average out.
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
            fn = fns[name]
            for _ in range(warmup):
                fn()
            t0 = time.perf_counter()
            fn()
            once = max(time.perf_counter() - t0, 1e-7)
            inner[name] = max(1, min(MAX_INNER, int(min_sample_s / once)))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for rep in range(reps):
        k = rep % len(order)
        for pool in order[k:] + order[:k]:
            enter(pool)
            names = groups[pool]
            j = rep % len(names)
            names = names[j:] + names[:j]
            fns[names[0]]()  # priming: wakes this pool, warms the caches after the sleep
            for name in names:
                fn, count = fns[name], inner[name]
                t0 = time.perf_counter()
                for _ in range(count):
                    fn()
                samples[name].append((time.perf_counter() - t0) / count)
    return {name: Timing(samples[name], inner[name]) for name in fns}
