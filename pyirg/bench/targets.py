"""The performance targets of issue 5, and which sizes meet them.

Why in code: the verdicts in the tables and in docs/benchmarks.md are computed from the
measurements, never judged by hand.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple


class Target(NamedTuple):
    """One target of issue 5: ``metric`` (a ratio of medians) <= ``limit`` where it applies."""

    layer: str
    text: str
    applies: Callable[[int, int], bool]
    metric: str
    limit: float


def _large(n: int, c: int) -> bool:
    return n >= 256 and c >= 256


TARGETS = (
    Target("map", "N>=256, C>=256: ours <= 0.5x PyTorch", _large, "vs_torch", 0.5),
    Target("map", "N>=256, C>=256: ours <= 1.5x GEMM bound", _large, "vs_bound", 1.5),
    Target("map", "every size: ours <= 1.0x PyTorch", lambda n, c: True, "vs_torch", 1.0),
    Target("vector", "N>=256: ours <= 0.5x PyTorch", lambda n, c: n >= 256, "vs_torch", 0.5),
    Target("vector", "every size: ours <= 1.0x PyTorch", lambda n, c: True, "vs_torch", 1.0),
)
TRAIN_TARGET_PCT = 1.0


def evaluate_targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every (target, size) it applies to, with the measured value and met/missed."""
    out = []
    for layer, text, applies, metric, limit in TARGETS:
        for row in rows:
            if row["layer"] == layer and applies(row["n"], row["c"]):
                value = row["ratios"][metric]
                out.append(
                    {
                        "layer": layer,
                        "target": text,
                        "n": row["n"],
                        "c": row["c"],
                        "metric": metric,
                        "value": value,
                        "limit": limit,
                        "met": value <= limit,
                    }
                )
    return out


def training_targets(train: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The training-overhead target for each method run, in evaluate_targets' shape."""
    return [
        {
            "layer": "training",
            "target": f"{t['method']}: overhead <= "
            f"{TRAIN_TARGET_PCT}% (IRG layers' own time / iteration without them)",
            "n": t["batch"],
            "c": None,
            "metric": "attributed_overhead_pct",
            "value": t["attributed_overhead_pct"],
            "limit": TRAIN_TARGET_PCT,
            "met": t["attributed_overhead_pct"] <= TRAIN_TARGET_PCT,
        }
        for t in train
    ]
