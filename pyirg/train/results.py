"""What a training run hands back: plain data, so callers need neither pycaffe nor the loop."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Snapshot:
    """A complete snapshot in OUT: both files exist under their final names."""

    iteration: int
    caffemodel: Path
    solverstate: Path


@dataclass
class TrainResult:
    """What a run produced: final weights, final metrics and the metric histories."""

    out_dir: Path
    weights: Path | None
    solverstate: Path | None
    iterations: int
    metrics: dict[str, float]
    train_history: list[dict[str, float]] = field(default_factory=list)
    test_history: list[dict[str, float]] = field(default_factory=list)
    interrupted: bool = False

    @property
    def accuracy(self) -> float | None:
        """The last test accuracy of the trained net (the student's in a distillation net)."""
        for key in ("student_accuracy", "accuracy"):
            if key in self.metrics:
                return self.metrics[key]
        return None

    @property
    def accuracy_history(self) -> list[tuple[int, float]]:
        """(iteration, accuracy) of every test, for the key :attr:`accuracy` reports."""
        for key in ("student_accuracy", "accuracy"):
            rows = [(int(r["iter"]), r[key]) for r in self.test_history if key in r]
            if rows:
                return rows
        return []
