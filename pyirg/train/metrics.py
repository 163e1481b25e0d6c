"""Metric files in OUT (JSON, CSV, PNG), rewritten atomically so a kill never truncates them.

metrics.json is also what a resumed run reads its histories back from, so a
resumed run's files continue the interrupted run's.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pyirg.data.fsutil import atomic_output, atomic_write_text

METRICS_JSON = "metrics.json"
TRAIN_CSV = "train_metrics.csv"
TEST_CSV = "test_metrics.csv"
CURVES_PNG = "curves.png"

Rows = list[dict[str, float]]


def write_csv(path: Path, rows: Rows) -> None:
    """Write rows whose keys may differ (e.g. test nets added) under the union of columns."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with atomic_output(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)


def plot_curves(
    path: Path,
    train_rows: list[dict[str, float]],
    test_rows: list[dict[str, float]],
    loss_names: Sequence[str],
    accuracy_names: Sequence[str],
) -> None:
    """Draw loss terms, learning rate and test accuracy against the iteration (PNG)."""
    from matplotlib.figure import Figure  # Agg canvas; no pyplot state, no display needed

    fig = Figure(figsize=(13, 4), layout="constrained")
    ax_loss, ax_lr, ax_acc = fig.subplots(1, 3)
    iters = [r["iter"] for r in train_rows]
    for name in [*loss_names, "total_loss"]:
        ax_loss.plot(iters, [r.get(name, math.nan) for r in train_rows], label=name, lw=1)
    ax_loss.set(title="training loss terms", xlabel="iteration")
    ax_lr.plot(iters, [r.get("lr", math.nan) for r in train_rows])
    ax_lr.set(title="learning rate", xlabel="iteration")
    test_iters = [r["iter"] for r in test_rows]
    for name in accuracy_names:
        ax_acc.plot(test_iters, [r.get(name, math.nan) for r in test_rows], "o-", label=name)
    ax_acc.set(title="test accuracy", xlabel="iteration")
    for ax in (ax_loss, ax_acc):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)


def final_metrics(
    iteration: int, train_rows: Rows, test_rows: Rows, accuracy_names: Sequence[str]
) -> dict[str, float]:
    """The summary a caller reads: the headline accuracies plus the last test and train rows."""
    final: dict[str, float] = {"iter": iteration}
    if test_rows:
        last = test_rows[-1]
        for k in accuracy_names:
            if k in last:
                final[k] = last[k]
        final.update({f"test/{k}": v for k, v in last.items() if k != "iter"})
    if train_rows:
        last = train_rows[-1]
        final.update({f"train/{k}": v for k, v in last.items() if k != "iter"})
    return final


def write_metrics(
    out: Path,
    run_info: Mapping[str, Any],
    final: Mapping[str, float],
    train_rows: Rows,
    test_rows: Rows,
    *,
    plot: bool,
    loss_names: Sequence[str],
    accuracy_names: Sequence[str],
) -> None:
    """Rewrite metrics.json and the CSVs, and the PNG when ``plot`` (it is slow to draw)."""
    doc = {"run": run_info, "final": final, "train": train_rows, "test": test_rows}
    atomic_write_text(out / METRICS_JSON, json.dumps(doc, indent=1) + "\n")
    write_csv(out / TRAIN_CSV, train_rows)
    write_csv(out / TEST_CSV, test_rows)
    if plot:
        plot_curves(out / CURVES_PNG, train_rows, test_rows, loss_names, accuracy_names)


def load_history(out: Path, iteration: int) -> tuple[Rows, Rows] | None:
    """The train and test rows a snapshot at ``iteration`` had seen, or None without a file.

    Train rows stop before ``iteration`` (the resumed run repeats none), test
    rows include it (a test at the snapshot's iteration already happened).
    """
    metrics = out / METRICS_JSON
    if not metrics.is_file():
        return None
    old = json.loads(metrics.read_text())
    train_rows = [r for r in old.get("train", []) if r["iter"] < iteration]
    test_rows = [r for r in old.get("test", []) if r["iter"] <= iteration]
    return train_rows, test_rows
