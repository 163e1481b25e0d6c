"""The report: a plain-text table for people and strict JSON for tools and tests."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from pyirg.verify.rows import Row


def format_table(rows: Sequence[Row]) -> str:
    """Aligned columns, so a failing row and its error stand out among hundreds."""
    head = ("layer", "mode", "dtype", "case", "abs fwd", "rel fwd", "abs bwd", "rel bwd", "")
    body = [
        (
            r.layer,
            r.mode,
            r.dtype,
            r.case,
            f"{r.fwd_abs:.2e}",
            f"{r.fwd_rel:.2e}",
            f"{r.bwd_abs:.2e}",
            f"{r.bwd_rel:.2e}",
            ("PASS" if r.passed else "FAIL") + (f"  ({r.note})" if r.note else ""),
        )
        for r in rows
    ]
    widths = [max(len(str(x[i])) for x in [head, *body]) for i in range(len(head) - 1)]
    lines = []
    for cells in [head, *body]:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + "  " + cells[-1])
    return "\n".join(lines)


def write_json(path: str, rows: Sequence[Row]) -> None:
    """Rows as strict JSON (a non-finite error, which always fails, is written as null)."""

    def clean(row: Row) -> dict[str, Any]:
        return {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in asdict(row).items()
        }

    report = {"passed": all(r.passed for r in rows), "rows": [clean(r) for r in rows]}
    with open(path, "w") as f:
        json.dump(report, f, indent=1, allow_nan=False)
