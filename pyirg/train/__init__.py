"""Train a Caffe net -- a teacher alone or an IRG distillation net -- through pycaffe.

Why a driver instead of ``caffe train``:

- **Teacher weights.**  A distillation net holds a frozen teacher (layers without
  the student prefix ``stu_``) and a student.  Caffe's ``copy_from`` silently
  leaves a teacher layer at its random initialisation when the .caffemodel lacks
  it, and aborts the process on a shape mismatch.  The driver compares the net's
  parameter layers with the .caffemodel first and refuses, naming the layers.
- **Atomic snapshots.**  Caffe writes snapshots in place, so a kill during a
  write leaves a truncated .caffemodel that looks complete.  Here Caffe writes
  into a temporary prefix inside OUT and the files are renamed into place (the
  .solverstate last, with its ``learned_net`` pointing at the final .caffemodel),
  so every snapshot in OUT is complete.
- **Interrupts.**  SIGINT/SIGTERM set a flag that is checked between solver
  iterations (the solver steps one iteration at a time); the run then saves a
  snapshot and raises :class:`TrainingInterrupted` (a KeyboardInterrupt, so a
  caller looping over runs stops too).  A second signal raises KeyboardInterrupt
  at once, abandoning any snapshot in progress (OUT keeps only complete ones).
- **Resume.**  ``resume=True`` restores the latest complete snapshot in OUT.  A
  solverstate holds the iteration and the update history but no data cursor and
  no RNG state, so a resumed run equals an uninterrupted one bit for bit only if
  the data of iteration ``i`` is a function of ``i``: Input-fed nets are fed by
  ``batch_fn(iteration) -> {blob: array}`` (see :func:`pyirg.data.feed.array_batch_fn`).
  Nets with Data layers resume with the cursor back at the start of the LMDB.
- **Metrics.**  Each loss term (net outputs with a non-zero loss weight), the
  learning rate and images/s per iteration; test outputs averaged over
  ``test_iter`` batches, with the student's and the teacher's accuracy for a
  distillation net; written as CSV and JSON and drawn to PNG in OUT.

Caffe's own periodic testing and snapshotting are switched off in the solver the
driver runs (written to OUT as ``solver.effective.prototxt``); the driver does
both itself, at ``test_interval`` and ``snapshot`` (or the overrides given).

Modules: :mod:`~pyirg.train.driver` (:func:`~pyirg.train.driver.train` and its
:class:`~pyirg.train.driver.TrainSettings`), :mod:`~pyirg.train.loop` (the iteration
loop and its signal handling), :mod:`~pyirg.train.weights` (teacher and initial
weights), :mod:`~pyirg.train.folder` (what OUT holds) and :mod:`~pyirg.train.cli`.
This module holds what they all share: what a run hands back and how it fails, plain
data so that callers need neither pycaffe nor the loop.
"""

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


class TrainError(RuntimeError):
    """Training cannot start or continue; the message names the file or layer."""


class TeacherWeightsError(TrainError):
    """Teacher weights are missing, incomplete or of the wrong shape."""


class PreflightError(TrainError):
    """``pyirg.check.check_net`` reported errors in the net."""


class TrainingDiverged(TrainError):
    """A loss term or the update became non-finite; the last finite weights were saved."""

    def __init__(self, message: str, last_finite: str | None = None) -> None:
        super().__init__(message)
        self.last_finite = last_finite

    def __reduce__(self) -> tuple:  # keeps last_finite across processes (the main job)
        return (type(self), (str(self), self.last_finite))


class TrainingInterrupted(KeyboardInterrupt):
    """Raised after SIGINT/SIGTERM once a snapshot is saved; ``result`` describes it.

    A KeyboardInterrupt, so that a caller looping over runs stops too.
    """

    def __init__(self, result: TrainResult, signum: int) -> None:
        super().__init__(f"interrupted by signal {signum} at iteration {result.iterations}")
        self.result = result
        self.signum = signum
