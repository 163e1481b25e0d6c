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
  ``batch_fn(iteration) -> {blob: array}`` (see :func:`pyirg.data.array_batch_fn`).
  Nets with Data layers resume with the cursor back at the start of the LMDB.
- **Metrics.**  Each loss term (net outputs with a non-zero loss weight), the
  learning rate and images/s per iteration; test outputs averaged over
  ``test_iter`` batches, with the student's and the teacher's accuracy for a
  distillation net; written as CSV and JSON and drawn to PNG in OUT.

Caffe's own periodic testing and snapshotting are switched off in the solver the
driver runs (written to OUT as ``solver.effective.prototxt``); the driver does
both itself, at ``test_interval`` and ``snapshot`` (or the overrides given).

Modules: :mod:`~pyirg.train.driver` (:func:`train`), :mod:`~pyirg.train.loop` (the
iteration loop), :mod:`~pyirg.train.weights` (teacher weights checks),
:mod:`~pyirg.train.snapshots`, :mod:`~pyirg.train.metrics`,
:mod:`~pyirg.train.solver_param`, :mod:`~pyirg.train.preflight`,
:mod:`~pyirg.train.signals`, :mod:`~pyirg.train.cli` (``main``).  Everything
public is re-exported here, so callers import from ``pyirg.train``.
"""

from __future__ import annotations

from pyirg.train.cli import build_parser, input_batch_shapes, main, npy_batch_fns
from pyirg.train.common import DEFAULT_STUDENT_PREFIX, BatchFn, PathLike
from pyirg.train.driver import EFFECTIVE_SOLVER, train
from pyirg.train.errors import (
    PreflightError,
    TeacherWeightsError,
    TrainError,
    TrainingDiverged,
    TrainingInterrupted,
)
from pyirg.train.metrics import CURVES_PNG, METRICS_JSON, TEST_CSV, TRAIN_CSV, plot_curves
from pyirg.train.preflight import run_preflight
from pyirg.train.results import Snapshot, TrainResult
from pyirg.train.snapshots import latest_snapshot
from pyirg.train.solver_param import load_solver_param, prepare_solver_param
from pyirg.train.weights import check_weights, net_param_shapes, teacher_layers, weights_shapes

__all__ = [
    "CURVES_PNG",
    "DEFAULT_STUDENT_PREFIX",
    "EFFECTIVE_SOLVER",
    "METRICS_JSON",
    "TEST_CSV",
    "TRAIN_CSV",
    "BatchFn",
    "PathLike",
    "PreflightError",
    "Snapshot",
    "TeacherWeightsError",
    "TrainError",
    "TrainResult",
    "TrainingDiverged",
    "TrainingInterrupted",
    "build_parser",
    "check_weights",
    "input_batch_shapes",
    "latest_snapshot",
    "load_solver_param",
    "main",
    "net_param_shapes",
    "npy_batch_fns",
    "plot_curves",
    "prepare_solver_param",
    "run_preflight",
    "teacher_layers",
    "train",
    "weights_shapes",
]
