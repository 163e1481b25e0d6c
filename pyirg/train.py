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
"""

from __future__ import annotations

import argparse
import csv
import importlib
import inspect
import json
import math
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Union

import numpy as np
from google.protobuf import text_format
from tqdm import tqdm

from pyirg.data.core import DataError
from pyirg.data.feed import array_batch_fn, pad_images, pixel_mean
from pyirg.data.fsutil import atomic_output, atomic_write_text, fsync_file
from pyirg.data.writer import read_npy_split

DEFAULT_STUDENT_PREFIX = "stu_"
EFFECTIVE_SOLVER = "solver.effective.prototxt"
METRICS_JSON = "metrics.json"
TRAIN_CSV = "train_metrics.csv"
TEST_CSV = "test_metrics.csv"
CURVES_PNG = "curves.png"
_TMP_PREFIX = ".snapshot-tmp-"
#: Caffe tests when ``iter % test_interval == 0``; this interval is never reached.
_NEVER = 2**31 - 1

BatchFn = Callable[[int], Mapping[str, np.ndarray]]
PathLike = Union[str, os.PathLike]


class TrainError(RuntimeError):
    """Training cannot start or continue; the message names the file or layer."""


class TeacherWeightsError(TrainError):
    """Teacher weights are missing, incomplete or of the wrong shape."""


class PreflightError(TrainError):
    """``pyirg.check.check_net`` reported errors in the net."""


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


class TrainingInterrupted(KeyboardInterrupt):
    """Raised after SIGINT/SIGTERM once a snapshot is saved; ``result`` describes it."""

    def __init__(self, result: TrainResult, signum: int) -> None:
        super().__init__(f"interrupted by signal {signum} at iteration {result.iterations}")
        self.result = result
        self.signum = signum


# --------------------------------------------------------------------------- caffe / protos


def _caffe() -> Any:
    try:
        import caffe
    except ImportError as e:  # pragma: no cover - environment problem
        raise TrainError(f"pycaffe is not importable ({e}); source tools/env.sh first") from e
    return caffe


def _pb() -> Any:
    return _caffe().proto.caffe_pb2


def _parse_text(path: Path, message: Any, what: str) -> Any:
    try:
        text = path.read_text()
    except OSError as e:
        raise TrainError(f"{path}: cannot read {what}: {e}") from e
    try:
        text_format.Merge(text, message)
    except text_format.ParseError as e:
        raise TrainError(f"{path}: not a valid {what}: {e}") from e
    return message


def load_solver_param(solver: PathLike | Any) -> tuple[Any, Path | None]:
    """Return a copy of the SolverParameter and the directory of its file (if any)."""
    pb = _pb()
    if isinstance(solver, pb.SolverParameter):
        param = pb.SolverParameter()
        param.CopyFrom(solver)
        return param, None
    path = Path(solver)
    return _parse_text(path, pb.SolverParameter(), "SolverParameter"), path.resolve().parent


def _resolve(name: str, base: Path | None, what: str) -> str:
    """Resolve a solver's relative file reference: from the cwd as Caffe does, else its dir."""
    path = Path(name)
    if path.is_absolute() or path.exists():
        if not path.exists():
            raise TrainError(f"{what} '{name}' does not exist")
        return str(path.resolve())
    if base is not None and (base / path).exists():
        return str((base / path).resolve())
    raise TrainError(f"{what} '{name}' not found (looked in {Path.cwd()} and {base})")


def prepare_solver_param(
    solver: PathLike | Any, net: PathLike | Any | None = None, *, out_dir: Path | None = None
) -> tuple[Any, Any, str]:
    """Load the solver, point it at ``net`` (a file or NetParameter) and parse the train net.

    Returns (solver parameter, train NetParameter, a name for messages).  A
    NetParameter given as ``net`` is written to ``out_dir/net.prototxt``.
    """
    pb = _pb()
    param, base = load_solver_param(solver)
    if net is not None:
        if isinstance(net, pb.NetParameter):
            if out_dir is None:
                raise ValueError("a NetParameter net needs an out_dir to be written to")
            net_path = out_dir / "net.prototxt"
            atomic_write_text(net_path, text_format.MessageToString(net))
        else:
            net_path = Path(net)
            if not net_path.is_file():
                raise TrainError(f"net file '{net}' does not exist")
        for name in ("net_param", "train_net", "train_net_param"):
            param.ClearField(name)
        param.net = str(net_path.resolve())
    else:
        for name in ("net", "train_net"):
            if param.HasField(name):
                setattr(param, name, _resolve(getattr(param, name), base, f"solver {name}"))
    for i, test_net in enumerate(param.test_net):
        param.test_net[i] = _resolve(test_net, base, "solver test_net")

    if param.HasField("net_param"):
        return param, param.net_param, "solver net_param"
    if param.HasField("train_net_param"):
        return param, param.train_net_param, "solver train_net_param"
    path = param.net or param.train_net
    if not path:
        raise TrainError("the solver names no net (net, net_param, train_net) and none was given")
    return param, _parse_text(Path(path), pb.NetParameter(), "NetParameter"), path


# --------------------------------------------------------------------------- checks


def _problem_is_warning(problem: object) -> bool:
    if getattr(problem, "is_error", None) is False:
        return True
    level = getattr(problem, "severity", None) or getattr(problem, "level", None)
    level = getattr(level, "name", level)
    return isinstance(level, str) and level.lower() in {"warning", "warn", "info", "note"}


def run_preflight(
    net_param: Any, source: str, *, student_prefix: str = DEFAULT_STUDENT_PREFIX
) -> list[str]:
    """Run ``pyirg.check.check_net`` if that module exists; raise on errors, return warnings.

    The checker is optional (it is developed separately), so a missing module
    is not an error, but a checker that fails to import is.
    """
    try:
        check = importlib.import_module("pyirg.check")
    except ModuleNotFoundError as e:
        if e.name == "pyirg.check":
            return []
        raise
    check_net = getattr(check, "check_net", None)
    if not callable(check_net):
        return []
    # The checker needs the student prefix to tell teacher from student layers.
    accepts_prefix = "student_prefix" in inspect.signature(check_net).parameters
    kwargs = {"student_prefix": student_prefix} if accepts_prefix else {}
    problems = list(check_net(net_param, **kwargs) or [])
    errors = [str(p) for p in problems if not _problem_is_warning(p)]
    warnings = [str(p) for p in problems if _problem_is_warning(p)]
    if errors:
        raise PreflightError(f"{source}: pre-flight check failed:\n  " + "\n  ".join(errors))
    return warnings


def _blob_proto_shape(blob: Any) -> tuple[tuple[int, ...], bool]:
    """A BlobProto's shape and whether it is given by the legacy num/channels/height/width."""
    if blob.HasField("shape"):
        return tuple(int(d) for d in blob.shape.dim), False
    return (blob.num, blob.channels, blob.height, blob.width), True


def _weights_blobs(path: PathLike) -> dict[str, list[tuple[tuple[int, ...], bool]]]:
    path = Path(path)
    if not path.is_file():
        raise TeacherWeightsError(f"weights file '{path}' does not exist")
    if path.suffix == ".h5":
        import h5py

        try:
            with h5py.File(path, "r") as f:
                data = f["data"]
                return {
                    name: [(tuple(data[name][str(i)].shape), False) for i in range(len(data[name]))]
                    for name in data
                }
        except (OSError, KeyError) as e:
            raise TeacherWeightsError(f"{path}: not Caffe HDF5 weights: {e}") from e
    param = _pb().NetParameter()
    try:
        param.ParseFromString(path.read_bytes())
    except Exception as e:  # protobuf's DecodeError differs between implementations
        raise TeacherWeightsError(f"{path}: not a binary Caffe NetParameter: {e}") from e
    blobs = {
        layer.name: [_blob_proto_shape(b) for b in layer.blobs]
        for layer in [*param.layer, *param.layers]  # V2 and legacy V1 layers
    }
    if not blobs:
        raise TeacherWeightsError(f"{path}: holds no layers (not a trained .caffemodel?)")
    return blobs


def weights_shapes(path: PathLike) -> dict[str, list[tuple[int, ...]]]:
    """Layer name -> parameter blob shapes of a .caffemodel (or Caffe .h5 weights)."""
    return {name: [s for s, _ in blobs] for name, blobs in _weights_blobs(path).items()}


def _shapes_match(source: tuple[int, ...], target: tuple[int, ...], legacy: bool) -> bool:
    if not legacy:
        return source == target
    # Caffe compares legacy num/channels/height/width with the target padded to 4 axes.
    return len(target) <= 4 and source == (1,) * (4 - len(target)) + target


def net_param_shapes(nets: Sequence[Any]) -> dict[str, list[tuple[int, ...]]]:
    """Layer name -> parameter blob shapes over the given pycaffe nets (first wins)."""
    shapes: dict[str, list[tuple[int, ...]]] = {}
    for net in nets:
        for name, blobs in net.params.items():
            shapes.setdefault(name, [tuple(b.data.shape) for b in blobs])
    return shapes


def check_weights(
    net_shapes: Mapping[str, list[tuple[int, ...]]],
    weights: PathLike,
    *,
    required: Sequence[str] = (),
) -> None:
    """Refuse weights that Caffe's copy_from would abort on or leave ``required`` layers unset.

    Every layer present in both must have the same number of blobs and the same
    shapes (Caffe aborts otherwise); every layer in ``required`` must be present
    with its blobs (Caffe would silently keep the random initialisation).
    """
    source = _weights_blobs(weights)
    missing = [name for name in required if not source.get(name)]
    if missing:
        raise TeacherWeightsError(
            f"{weights}: no weights for teacher layer(s) {', '.join(missing)}; "
            "they would stay uninitialised"
        )
    problems = []
    for name, target in net_shapes.items():
        got = source.get(name)
        if got is None:
            continue
        if len(got) != len(target):
            problems.append(
                f"layer '{name}': {len(got)} blobs in the weights, {len(target)} in the net"
            )
            continue
        for i, ((shape, legacy), want) in enumerate(zip(got, target)):
            if not _shapes_match(shape, want, legacy):
                problems.append(f"layer '{name}' blob {i}: weights {shape} vs net {want}")
    if problems:
        raise TeacherWeightsError(f"{weights}: shape mismatch: " + "; ".join(problems))


def teacher_layers(
    net_shapes: Mapping[str, list[tuple[int, ...]]], student_prefix: str
) -> list[str]:
    """Layers with parameters that belong to the teacher (no student prefix)."""
    return [name for name in net_shapes if not name.startswith(student_prefix)]


# --------------------------------------------------------------------------- snapshots


def latest_snapshot(out_dir: PathLike, name: str = "snapshot") -> Snapshot | None:
    """The complete snapshot (.caffemodel and .solverstate) with the highest iteration."""
    out = Path(out_dir)
    if not out.is_dir():
        return None
    pattern = re.compile(rf"^{re.escape(name)}_iter_(\d+)\.solverstate$")
    best: Snapshot | None = None
    for path in out.iterdir():
        m = pattern.match(path.name)
        if not m:
            continue
        it = int(m.group(1))
        model = out / f"{name}_iter_{it}.caffemodel"
        if model.is_file() and (best is None or it > best.iteration):
            best = Snapshot(it, model, path)
    return best


def _snapshot_name(prefix: str) -> str:
    name = Path(prefix).name if prefix and not prefix.endswith("/") else ""
    return name or "snapshot"


# --------------------------------------------------------------------------- signals


class _StopRequest:
    def __init__(self) -> None:
        self.signum: int | None = None


@contextmanager
def _stop_on_signals(stop: _StopRequest) -> Iterator[None]:
    """First SIGINT/SIGTERM: ask the loop to stop; second: stop now (KeyboardInterrupt)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be installed from the main thread
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if stop.signum is not None:
            raise KeyboardInterrupt
        stop.signum = signum

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


# --------------------------------------------------------------------------- outputs


def _write_csv(path: Path, rows: list[dict[str, float]]) -> None:
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


# --------------------------------------------------------------------------- the run


class _Run:
    """One training run over a built solver: the loop, tests, snapshots, metrics."""

    def __init__(
        self,
        solver: Any,
        param: Any,
        out: Path,
        tmp: Path,
        name: str,
        *,
        batch_fn: BatchFn | None,
        test_batch_fn: BatchFn | None,
        max_iter: int,
        test_interval: int,
        snapshot_interval: int,
        student_prefix: str,
        distill: bool,
        progress: bool,
        run_info: dict[str, Any],
    ) -> None:
        self.solver = solver
        self.param = param
        self.out, self.tmp, self.name = out, tmp, name
        self.batch_fn, self.test_batch_fn = batch_fn, test_batch_fn
        self.max_iter = max_iter
        self.test_interval = test_interval
        self.snapshot_interval = snapshot_interval
        self.prefix = student_prefix
        self.distill = distill
        self.progress = progress
        self.run_info = run_info
        self.train_rows: list[dict[str, float]] = []
        self.test_rows: list[dict[str, float]] = []
        self.last_snapshot: Snapshot | None = None

        net = solver.net
        weights = net.blob_loss_weights
        self.train_scalars = [b for b in net.outputs if net.blobs[b].count == 1]
        self.loss_terms = [b for b, w in weights.items() if w != 0 and net.blobs[b].count == 1]
        self.loss_weights = {b: float(weights[b]) for b in self.loss_terms}
        batch = next(iter(net.blobs.values())).shape[0] if len(net.blobs) else 0
        self.images_per_iter = batch * max(1, param.iter_size)
        self.accuracy_blobs = self._accuracy_blobs()

    def _accuracy_blobs(self) -> list[str]:
        if not self.solver.test_nets:
            return []
        tnet = self.solver.test_nets[0]
        return [
            tnet.top_names[lname][0]
            for lname, layer in zip(tnet._layer_names, tnet.layers)
            if layer.type == "Accuracy" and tnet.top_names[lname]
        ]

    @property
    def summary_accuracy_names(self) -> list[str]:
        return ["student_accuracy", "teacher_accuracy"] if self.distill else ["accuracy"]

    # -- feeding -----------------------------------------------------------------------
    @staticmethod
    def _feed(net: Any, batch: Mapping[str, np.ndarray], what: str) -> None:
        missing = [b for b in net.inputs if b not in batch]
        if missing:
            raise TrainError(f"{what} gave no array for input blob(s) {', '.join(missing)}")
        for name, value in batch.items():
            if name not in net.blobs:
                raise TrainError(f"{what} gave an array for '{name}', which the net does not have")
            array = np.asarray(value, dtype=np.float32)
            blob = net.blobs[name]
            if array.shape != blob.data.shape:
                blob.reshape(*array.shape)
            blob.data[...] = array

    # -- one iteration ----------------------------------------------------------------
    def _train_one(self, bar: tqdm) -> None:
        solver, net = self.solver, self.solver.net
        it = solver.iter
        start = time.perf_counter()
        if self.batch_fn is not None:
            self._feed(net, self.batch_fn(it), f"batch_fn({it})")
        lr = float(solver.lr) if hasattr(solver, "lr") else math.nan
        solver.step(1)
        elapsed = time.perf_counter() - start
        row: dict[str, float] = {"iter": it, "lr": lr}
        row["images_per_s"] = self.images_per_iter / elapsed if elapsed > 0 else math.nan
        for name in dict.fromkeys([*self.loss_terms, *self.train_scalars]):
            row[name] = float(net.blobs[name].data.flat[0])
        row["total_loss"] = sum(w * row[b] for b, w in self.loss_weights.items())
        self.train_rows.append(row)
        postfix = {b: f"{row[b]:.4g}" for b in self.loss_terms}
        postfix["lr"] = f"{lr:.3g}"
        postfix["img/s"] = f"{row['images_per_s']:.0f}"
        bar.set_postfix(postfix, refresh=False)
        bar.update(1)

    # -- testing ------------------------------------------------------------------------
    def _test(self, bar: tqdm | None) -> None:
        row: dict[str, float] = {"iter": self.solver.iter}
        for k, tnet in enumerate(self.solver.test_nets):
            tnet.share_with(self.solver.net)
            n = self.param.test_iter[k]
            scalars = [b for b in tnet.outputs if tnet.blobs[b].count == 1]
            sums = dict.fromkeys(scalars, 0.0)
            for i in range(n):
                if tnet.inputs:
                    assert self.test_batch_fn is not None  # checked before training
                    self._feed(tnet, self.test_batch_fn(i), f"test_batch_fn({i})")
                tnet.forward()
                for b in scalars:
                    sums[b] += float(tnet.blobs[b].data.flat[0])
            tag = "" if k == 0 else f"test{k}/"
            row.update({f"{tag}{b}": s / max(n, 1) for b, s in sums.items()})
        student = [b for b in self.accuracy_blobs if b.startswith(self.prefix)]
        teacher = [b for b in self.accuracy_blobs if not b.startswith(self.prefix)]
        if self.distill:
            if student:
                row["student_accuracy"] = row[student[0]]
            if teacher:
                row["teacher_accuracy"] = row[teacher[0]]
        elif self.accuracy_blobs:
            row["accuracy"] = row[self.accuracy_blobs[0]]
        self.test_rows.append(row)
        shown = {k: row[k] for k in self.summary_accuracy_names if k in row} or {
            k: v for k, v in row.items() if k != "iter"
        }
        text = ", ".join(f"{k} {v:.4f}" for k, v in shown.items())
        if self.progress:
            tqdm.write(f"[test] iteration {row['iter']}: {text}", file=sys.stderr)
        self.write_metrics(plot=False)

    # -- snapshots ----------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        it = self.solver.iter
        if self.last_snapshot is not None and self.last_snapshot.iteration == it:
            return self.last_snapshot
        pb = _pb()
        self.solver.snapshot()
        base = f"{self.name}_iter_{it}"
        tmp_model, tmp_state = self.tmp / f"{base}.caffemodel", self.tmp / f"{base}.solverstate"
        if not (tmp_model.is_file() and tmp_state.is_file()):
            raise TrainError(f"Caffe wrote no snapshot {tmp_model} / {tmp_state}")
        model, state_path = self.out / f"{base}.caffemodel", self.out / f"{base}.solverstate"
        state = pb.SolverState.FromString(tmp_state.read_bytes())
        state.learned_net = str(model)
        tmp_state.write_bytes(state.SerializeToString())
        fsync_file(tmp_model)
        fsync_file(tmp_state)
        os.replace(tmp_model, model)
        os.replace(tmp_state, state_path)  # last: its presence marks the snapshot complete
        self.last_snapshot = Snapshot(it, model, state_path)
        self.write_metrics(plot=False)
        return self.last_snapshot

    def restore(self, snap: Snapshot) -> None:
        pb = _pb()
        state = pb.SolverState.FromString(snap.solverstate.read_bytes())
        state.learned_net = str(snap.caffemodel)  # OUT may have moved since it was written
        fixed = self.tmp / "resume.solverstate"
        fixed.write_bytes(state.SerializeToString())
        self.solver.restore(str(fixed))
        self.last_snapshot = snap
        metrics = self.out / METRICS_JSON
        if metrics.is_file():
            old = json.loads(metrics.read_text())
            self.train_rows = [r for r in old.get("train", []) if r["iter"] < snap.iteration]
            self.test_rows = [r for r in old.get("test", []) if r["iter"] <= snap.iteration]

    # -- outputs ------------------------------------------------------------------------
    def final_metrics(self) -> dict[str, float]:
        final: dict[str, float] = {"iter": self.solver.iter}
        if self.test_rows:
            last = self.test_rows[-1]
            for k in self.summary_accuracy_names:
                if k in last:
                    final[k] = last[k]
            final.update({f"test/{k}": v for k, v in last.items() if k != "iter"})
        if self.train_rows:
            last = self.train_rows[-1]
            final.update({f"train/{k}": v for k, v in last.items() if k != "iter"})
        return final

    def write_metrics(self, *, plot: bool) -> None:
        doc = {
            "run": self.run_info,
            "final": self.final_metrics(),
            "train": self.train_rows,
            "test": self.test_rows,
        }
        atomic_write_text(self.out / METRICS_JSON, json.dumps(doc, indent=1) + "\n")
        _write_csv(self.out / TRAIN_CSV, self.train_rows)
        _write_csv(self.out / TEST_CSV, self.test_rows)
        if plot:
            plot_curves(
                self.out / CURVES_PNG,
                self.train_rows,
                self.test_rows,
                self.loss_terms,
                self.accuracy_blobs,
            )

    def result(self, *, interrupted: bool) -> TrainResult:
        snap = self.last_snapshot
        return TrainResult(
            out_dir=self.out,
            weights=snap.caffemodel if snap else None,
            solverstate=snap.solverstate if snap else None,
            iterations=self.solver.iter,
            metrics=self.final_metrics(),
            train_history=list(self.train_rows),
            test_history=list(self.test_rows),
            interrupted=interrupted,
        )

    # -- the loop -----------------------------------------------------------------------
    def run(self) -> TrainResult:
        solver = self.solver
        stop = _StopRequest()
        bar = tqdm(
            total=self.max_iter,
            initial=solver.iter,
            disable=not self.progress,
            desc=self.out.name,
            unit="it",
            dynamic_ncols=True,
        )
        with _stop_on_signals(stop), bar:
            try:
                while solver.iter < self.max_iter and stop.signum is None:
                    self._train_one(bar)
                    it = solver.iter
                    if self.test_interval and solver.test_nets and it % self.test_interval == 0:
                        self._test(bar)
                    if self.snapshot_interval and it % self.snapshot_interval == 0:
                        self.snapshot()
            except KeyboardInterrupt:
                if stop.signum is not None:  # a second signal: stop now, no snapshot
                    raise
                stop.signum = signal.SIGINT  # e.g. raised by a batch function
            if stop.signum is not None:
                self.snapshot()
                self.write_metrics(plot=True)
                raise TrainingInterrupted(self.result(interrupted=True), stop.signum)
            tested = bool(self.test_rows) and self.test_rows[-1]["iter"] == solver.iter
            if solver.test_nets and not tested:
                self._test(bar)
            self.snapshot()
            self.write_metrics(plot=True)
        return self.result(interrupted=False)


def _load_teacher(
    solver: Any,
    teacher_weights: PathLike | None,
    student_prefix: str,
    source: str,
    *,
    required: bool,
) -> tuple[bool, dict[str, list[tuple[int, ...]]]]:
    """Check and load teacher weights; return (is a distillation net, parameter shapes).

    A net is a distillation net when some layer carries the student prefix; its
    other layers with parameters are the teacher's, and must all come from
    ``teacher_weights`` (``required`` is False when a snapshot will supply them).
    """
    nets = [solver.net, *solver.test_nets]
    shapes = net_param_shapes(nets)
    distill = any(n.startswith(student_prefix) for n in solver.net._layer_names)
    teacher = teacher_layers(shapes, student_prefix) if distill else []
    if teacher_weights is not None:
        if not distill:
            raise TeacherWeightsError(
                f"{source}: no layer carries the student prefix '{student_prefix}', so the "
                "net is not a distillation net; teacher weights do not apply"
            )
        check_weights(shapes, teacher_weights, required=teacher)
        for net in nets:  # test-only layers are not shared from the train net
            net.copy_from(str(teacher_weights))
    elif teacher and required:
        raise TeacherWeightsError(
            f"{source}: teacher layer(s) {', '.join(teacher)} have parameters "
            "but no teacher weights were given (--teacher-weights)"
        )
    return distill, shapes


def _remove_stale_tmp(out: Path) -> None:
    """Remove what a killed run (SIGKILL, power loss) left under temporary names."""
    for path in out.glob(f"{_TMP_PREFIX}*"):
        shutil.rmtree(path, ignore_errors=True)
    for path in out.glob(".*.tmp-*"):
        if path.is_file():
            path.unlink()


def train(
    solver: PathLike | Any,
    out_dir: PathLike,
    *,
    net: PathLike | Any | None = None,
    teacher_weights: PathLike | None = None,
    seed: int = 0,
    resume: bool = False,
    batch_fn: BatchFn | None = None,
    test_batch_fn: BatchFn | None = None,
    max_iter: int | None = None,
    test_interval: int | None = None,
    snapshot_interval: int | None = None,
    student_prefix: str = DEFAULT_STUDENT_PREFIX,
    progress: bool = True,
    preflight: bool = True,
    gpu: int | None = None,
) -> TrainResult:
    """Train the solver's net (or ``net``) into ``out_dir`` and return the final metrics.

    ``solver``: a solver .prototxt path or a SolverParameter.  ``net``: a net
    .prototxt path or a NetParameter replacing the solver's net.  Input-fed nets
    need ``batch_fn(iteration)`` (and ``test_batch_fn(batch_index)`` for Input-fed
    test nets), each returning ``{blob name: array}``; they must be deterministic
    in their argument for ``resume`` to reproduce an uninterrupted run.
    ``max_iter``/``test_interval``/``snapshot_interval`` override the solver's
    values (0 disables periodic tests or snapshots; the end of training always
    tests and snapshots).  Snapshots are ``out_dir/<basename of the solver's
    snapshot_prefix, default "snapshot">_iter_N.{caffemodel,solverstate}``; an
    ``out_dir`` that already holds some is refused unless ``resume``.  Test
    outputs are averaged over ``test_iter`` batches of each test net, which
    shares the train net's weights.  Raises :class:`TrainError` (or a subclass) before
    training when the setup is wrong, :class:`TrainingInterrupted` after saving a
    snapshot on SIGINT/SIGTERM.
    """
    caffe = _caffe()
    pb = caffe.proto.caffe_pb2
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    param, net_param, source = prepare_solver_param(solver, net, out_dir=out)
    if preflight:
        for warning in run_preflight(net_param, source, student_prefix=student_prefix):
            print(f"warning: {source}: {warning}", file=sys.stderr)

    max_iter = param.max_iter if max_iter is None else max_iter
    if max_iter <= 0:
        raise TrainError(f"max_iter must be positive, got {max_iter}")
    test_interval = param.test_interval if test_interval is None else test_interval
    snapshot_interval = param.snapshot if snapshot_interval is None else snapshot_interval
    if test_interval < 0 or snapshot_interval < 0:
        raise TrainError("test_interval and snapshot_interval must be >= 0")
    if batch_fn is not None and param.iter_size > 1:
        raise TrainError("batch_fn feeds one batch per iteration; iter_size > 1 would reuse it")
    name = _snapshot_name(param.snapshot_prefix)
    existing = latest_snapshot(out, name)
    if existing is not None and not resume:
        raise TrainError(
            f"{out} already holds snapshot {existing.solverstate.name}; "
            "pass --resume to continue from it, or choose another --out"
        )

    _remove_stale_tmp(out)
    tmp = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=out))
    try:
        param.snapshot_prefix = str(tmp / name)
        param.snapshot = 0
        param.snapshot_after_train = False
        param.snapshot_format = pb.SolverParameter.BINARYPROTO
        param.random_seed = seed
        param.max_iter = max_iter
        param.test_interval = _NEVER
        param.test_initialization = False
        param.display = 0
        solver_file = out / EFFECTIVE_SOLVER
        atomic_write_text(
            solver_file,
            "# Written by pyirg.train: testing and snapshots are done by the driver.\n"
            + text_format.MessageToString(param),
        )
        if gpu is None:
            caffe.set_mode_cpu()
        else:
            caffe.set_device(gpu)
            caffe.set_mode_gpu()
        caffe.set_random_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        csolver = caffe.get_solver(str(solver_file))

        resuming = resume and existing is not None
        distill, shapes = _load_teacher(
            csolver, teacher_weights, student_prefix, source, required=not resuming
        )
        if csolver.net.inputs and batch_fn is None:
            raise TrainError(
                f"{source}: the train net is Input-fed ({', '.join(csolver.net.inputs)}) "
                "but no batch_fn was given"
            )
        if any(t.inputs for t in csolver.test_nets) and test_batch_fn is None:
            raise TrainError(f"{source}: the test net is Input-fed but no test_batch_fn was given")

        run_info = {
            "solver": str(solver) if not isinstance(solver, pb.SolverParameter) else "<param>",
            "net": source,
            "teacher_weights": str(teacher_weights) if teacher_weights else None,
            "seed": seed,
            "max_iter": max_iter,
            "student_prefix": student_prefix,
            "distillation": distill,
        }
        run = _Run(
            csolver,
            param,
            out,
            tmp,
            name,
            batch_fn=batch_fn,
            test_batch_fn=test_batch_fn,
            max_iter=max_iter,
            test_interval=test_interval,
            snapshot_interval=snapshot_interval,
            student_prefix=student_prefix,
            distill=distill,
            progress=progress,
            run_info=run_info,
        )
        if resuming:
            assert existing is not None
            check_weights(shapes, existing.caffemodel)
            run.restore(existing)
        return run.run()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- CLI


def input_batch_shapes(net_param: Any, phase: int) -> list[tuple[str, tuple[int, ...]]]:
    """(top, shape) of the Input layers of ``net_param`` that are active in ``phase``."""
    tops: list[tuple[str, tuple[int, ...]]] = []
    for layer in net_param.layer:
        if layer.type != "Input":
            continue
        if layer.include and not any(r.phase == phase for r in layer.include):
            continue
        if any(r.HasField("phase") and r.phase == phase for r in layer.exclude):
            continue
        shapes = list(layer.input_param.shape)
        for i, top in enumerate(layer.top):
            shape = shapes[i] if i < len(shapes) else shapes[0]
            tops.append((top, tuple(int(d) for d in shape.dim)))
    return tops


def npy_batch_fns(
    data_dir: PathLike,
    net_param: Any,
    *,
    seed: int,
    pad: int = 0,
    mirror: bool = False,
    scale: float = 1.0,
) -> tuple[BatchFn, BatchFn]:
    """Batch functions over a prepared directory's .npy arrays for the net's Input layers.

    The first Input top receives the images (minus the per-pixel train mean,
    of the padded images when ``pad`` > 0), the second the labels; the batch
    sizes are the Input shapes' first dimensions in each phase.
    """
    pb = _pb()
    split = read_npy_split(data_dir)
    fns = []
    for phase in (pb.TRAIN, pb.TEST):
        tops = input_batch_shapes(net_param, phase)
        if len(tops) < 2:
            raise TrainError(
                f"--npy-data needs an Input layer with data and label tops in phase "
                f"{pb.Phase.Name(phase)}; found {[t for t, _ in tops]}"
            )
        (data_blob, shape), (label_blob, _) = tops[0], tops[1]
        if phase == pb.TRAIN:
            mean = pixel_mean(pad_images(split.train_images, pad))
            fns.append(
                array_batch_fn(
                    split.train_images,
                    split.train_labels,
                    shape[0],
                    seed=seed,
                    pad=pad,
                    mirror=mirror,
                    mean=mean,
                    scale=scale,
                    data_blob=data_blob,
                    label_blob=label_blob,
                )
            )
        else:
            fns.append(
                array_batch_fn(
                    split.test_images,
                    split.test_labels,
                    shape[0],
                    shuffle=False,
                    mean=pixel_mean(split.train_images),
                    scale=scale,
                    data_blob=data_blob,
                    label_blob=label_blob,
                )
            )
    return fns[0], fns[1]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train",
        description="Train a Caffe net or an IRG distillation net through pycaffe.",
    )
    p.add_argument("--solver", required=True, type=Path, help="solver .prototxt")
    p.add_argument("--net", type=Path, help="net .prototxt (replaces the solver's net)")
    p.add_argument("--teacher-weights", type=Path, help="teacher .caffemodel (distillation)")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--resume", action="store_true", help="continue from the latest snapshot")
    p.add_argument("--max-iter", type=int, help="override the solver's max_iter")
    p.add_argument("--test-interval", type=int, help="override test_interval (0: only at end)")
    p.add_argument("--snapshot-interval", type=int, help="override snapshot (0: only at end)")
    p.add_argument("--student-prefix", default=DEFAULT_STUDENT_PREFIX)
    p.add_argument("--gpu", type=int, help="GPU id (default: CPU)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-preflight", action="store_true", help="skip pyirg.check")
    g = p.add_argument_group("Input-fed nets")
    g.add_argument(
        "--npy-data",
        type=Path,
        help="prepared directory with train/test *.npy (prepare_data digits) for Input layers",
    )
    g.add_argument("--pad", type=int, default=0, help="random crops from images padded by N")
    g.add_argument("--mirror", action="store_true", help="random horizontal flips")
    g.add_argument("--scale", type=float, default=1.0, help="multiply mean-subtracted pixels")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("GLOG_minloglevel", "2")  # before pycaffe loads glog
    try:
        batch_fn = test_batch_fn = None
        if args.npy_data is not None:
            _, net_param, _ = prepare_solver_param(args.solver, args.net)
            batch_fn, test_batch_fn = npy_batch_fns(
                args.npy_data,
                net_param,
                seed=args.seed,
                pad=args.pad,
                mirror=args.mirror,
                scale=args.scale,
            )
        result = train(
            args.solver,
            args.out,
            net=args.net,
            teacher_weights=args.teacher_weights,
            seed=args.seed,
            resume=args.resume,
            batch_fn=batch_fn,
            test_batch_fn=test_batch_fn,
            max_iter=args.max_iter,
            test_interval=args.test_interval,
            snapshot_interval=args.snapshot_interval,
            student_prefix=args.student_prefix,
            progress=not args.no_progress,
            preflight=not args.no_preflight,
            gpu=args.gpu,
        )
    except TrainingInterrupted as e:
        print(
            f"train: {signal.Signals(e.signum).name} at iteration {e.result.iterations}: "
            f"saved {e.result.solverstate}; continue with --resume",
            file=sys.stderr,
        )
        return 128 + e.signum
    except (TrainError, DataError) as e:
        print(f"train: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"weights": str(result.weights), **result.metrics}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
