"""Train a Caffe net -- a teacher alone or an IRG distillation net -- through pycaffe.

Why a driver instead of ``caffe train``:

- **Teacher weights** are compared with the net's parameter layers first, and refused
  naming the layers: Caffe's ``copy_from`` silently leaves a layer the .caffemodel
  lacks at its random initialisation, and aborts on a shape mismatch
  (:mod:`~pyirg.train.weights`).
- **Atomic snapshots.**  Caffe writes in place, so a kill leaves a truncated .caffemodel
  that looks complete; every snapshot in OUT is complete (:mod:`~pyirg.train.folder`).
- **Interrupts.**  SIGINT/SIGTERM set a flag checked between solver iterations; the
  run then saves a snapshot and raises :class:`TrainingInterrupted`.  A second signal
  raises KeyboardInterrupt at once, abandoning any snapshot in progress.
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

Modules: :mod:`~pyirg.train.driver` (:func:`~pyirg.train.driver.train`, its
:class:`~pyirg.train.driver.TrainSettings`, and why Caffe's own tests and snapshots are
off), :mod:`~pyirg.train.loop` (the iterations and signals), :mod:`~pyirg.train.weights`
(teacher and initial weights), :mod:`~pyirg.train.folder` (what OUT holds),
:mod:`~pyirg.train.multi_gpu` and :mod:`~pyirg.train.cli`. This module holds what they
share: what a run hands back and how it fails, plain data so that callers need neither
pycaffe nor the loop.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

#: The trained net's accuracy in the metrics: the student's in a distillation net.
_ACCURACY_KEYS = ("student_accuracy", "accuracy")


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
        return next((self.metrics[k] for k in _ACCURACY_KEYS if k in self.metrics), None)

    @property
    def accuracy_history(self) -> list[tuple[int, float]]:
        """(iteration, accuracy) of every test, for the key :attr:`accuracy` reports."""
        for key in _ACCURACY_KEYS:
            rows = [(int(r["iter"]), r[key]) for r in self.test_history if key in r]
            if rows:
                return rows
        return []


def chance_bar(labels: Sequence[int], classes: int) -> float:
    """The highest test accuracy a net that learned nothing reaches over the test
    ``labels`` within three standard errors: one that always answers the most frequent
    class (at least 1/``classes``) scores its share p, and p + 3 sqrt(p (1 - p) / n)
    covers a guesser's luck over n images."""
    counts = Counter(int(y) for y in labels)
    p = max(1.0 / classes, max(counts.values()) / len(labels))
    return p + 3 * math.sqrt(p * (1 - p) / len(labels))


def chance_level(accuracy: float, labels: Sequence[int], classes: int) -> str | None:
    """A sentence saying that ``accuracy`` on the test ``labels`` is no better than chance
    (:func:`chance_bar`), or None when it is better.

    Why: a run whose loss stays finite but explodes (a distillation term weighted too
    high) ends with a net that predicts one class; no divergence check stops it, and a
    bare accuracy of 0.10 reads like a result.
    """
    if classes < 2 or len(labels) == 0 or accuracy > (bar := chance_bar(labels, classes)):
        return None
    return (
        f"accuracy {accuracy:.4f} is chance level for {classes} classes over {len(labels)} "
        f"test images (at most {bar:.4f}: the most frequent class's share plus three "
        "standard errors)"
    )


class TrainError(RuntimeError):
    """Training cannot start or continue; the message names the file or layer."""

    #: Raised by the loop, not the set-up: the run folder holds what it trained so far.
    started = False


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
