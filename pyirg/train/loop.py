"""The training loop over a built solver, stepping one iteration at a time.

Stepping singly lets the driver feed Input-fed nets per iteration, record each
loss term, test and snapshot on its own schedule, and stop cleanly between
iterations on a signal.
"""

from __future__ import annotations

import math
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from pyirg.train import Snapshot, TrainError, TrainingDiverged, TrainingInterrupted, TrainResult
from pyirg.train.folder import (
    final_metrics,
    load_history,
    restore_snapshot,
    resumable_snapshot,
    save_snapshot,
    write_metrics,
)
from pyirg.train.weights import net_param_shapes

if TYPE_CHECKING:
    from pyirg.train.driver import TrainSettings


class TrainingRun:
    """One training run over a built solver: the loop, tests, snapshots, metrics."""

    def __init__(
        self,
        solver: Any,
        param: Any,
        out: Path,
        tmp: Path,
        name: str,
        settings: TrainSettings,
        distill: bool,
        run_info: dict[str, Any],
        net_param: Any,
    ) -> None:
        self.solver = solver
        self.param = param
        self.out, self.tmp, self.name = out, tmp, name
        #: Resolved (no None left in max_iter, test_interval, snapshot_interval).
        self.settings = settings
        #: Under pyirg.train.multi_gpu only rank 0 tests and writes; the others train.
        self.lead = settings.solver_rank == 0
        self.nccl: Any = None  # the NCCL session, kept alive with the run
        self.run_info = run_info
        self._feed = BatchFeeder(net_param)
        #: Keep the weights before each step and the update norm (one copy per step: on a
        #: GPU two host transfers, so there only the loss is watched).
        self.track_finite = settings.gpu is None
        self.train_rows: list[dict[str, float]] = []
        # The weights before the current step, so a diverged run can still save them.
        # The param blobs once: pycaffe rebuilds ``net.params`` on every access.
        self._params = [b for blobs in solver.net.params.values() for b in blobs]
        self._finite: list[np.ndarray] = (
            [b.data.copy() for b in self._params] if self.track_finite else []
        )
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
        if distill:
            prefix = settings.student_prefix
            student = [b for b in self.accuracy_blobs if b.startswith(prefix)]
            teacher = [b for b in self.accuracy_blobs if not b.startswith(prefix)]
            sides = {"student_accuracy": student, "teacher_accuracy": teacher}
        else:
            sides = {"accuracy": self.accuracy_blobs}
        #: The headline accuracies: the student's and teacher's apart in a distillation net.
        self.summary_accuracy_names = list(sides)
        #: Headline accuracy -> the test output it reports (its side's first Accuracy).
        self._headline = {name: blobs[0] for name, blobs in sides.items() if blobs}

    def _accuracy_blobs(self) -> list[str]:
        if not self.solver.test_nets:
            return []
        tnet = self.solver.test_nets[0]
        return [
            tnet.top_names[lname][0]
            for lname, layer in zip(tnet._layer_names, tnet.layers)
            if layer.type == "Accuracy" and tnet.top_names[lname]
        ]

    # -- one iteration ----------------------------------------------------------------
    def _train_one(self, bar: tqdm) -> None:
        solver, net = self.solver, self.solver.net
        it = solver.iter
        start = time.perf_counter()
        if self.settings.batch_fn is not None:
            self._feed(net, self.settings.batch_fn(it), f"batch_fn({it})")
        lr = float(solver.lr) if hasattr(solver, "lr") else math.nan
        params = self._params
        if self.track_finite:
            for saved, blob in zip(self._finite, params):
                np.copyto(saved, blob.data)
        solver.step(1)
        elapsed = time.perf_counter() - start
        row: dict[str, float] = {"iter": it, "lr": lr}
        row["images_per_s"] = self.images_per_iter / elapsed if elapsed > 0 else math.nan
        for name in dict.fromkeys([*self.loss_terms, *self.train_scalars]):
            row[name] = float(net.blobs[name].data.flat[0])
        row["total_loss"] = sum(w * row[b] for b, w in self.loss_weights.items())
        # After a step each param's diff holds the update it just applied.
        row["update_norm"] = math.nan
        if self.track_finite:
            with np.errstate(over="ignore", invalid="ignore"):  # inf/NaN are what we look for
                row["update_norm"] = math.sqrt(
                    sum(float(np.dot(p.diff.ravel(), p.diff.ravel())) for p in params)
                )
        self.train_rows.append(row)
        update_ok = not self.track_finite or math.isfinite(row["update_norm"])
        if not (math.isfinite(row["total_loss"]) and update_ok):
            self._diverged(row, it)
        postfix = {b: f"{row[b]:.4g}" for b in self.loss_terms}
        postfix["lr"] = f"{lr:.3g}"
        postfix["img/s"] = f"{row['images_per_s']:.0f}"
        bar.set_postfix(postfix, refresh=False)
        bar.update(1)
        if self.settings.on_iteration is not None:
            self.settings.on_iteration(solver.iter, net)

    def _diverged(self, row: dict[str, float], it: int) -> None:
        """Save the weights before the step that diverged, write the metrics, raise."""
        self.write_metrics(plot=True)
        terms = ", ".join(f"{b} {row[b]:.4g}" for b in self.loss_terms)
        message = f"training diverged at iteration {it + 1}: loss terms {terms}"
        if self.track_finite:
            for saved, blob in zip(self._finite, self._params):
                blob.data[...] = saved
            saved_at: Path | None = self.out / f"{self.name}_iter_{it}_last_finite.caffemodel"
            tmp = self.tmp / saved_at.name
            self.solver.net.save(str(tmp))
            tmp.replace(saved_at)
            message += f"; update norm {row['update_norm']:.4g}"
            where = f"The weights before that iteration are in {saved_at}"
        else:  # GPU: the last periodic snapshot is the last finite state kept
            saved_at = self.last_snapshot.caffemodel if self.last_snapshot else None
            where = f"The last snapshot is {saved_at}"
        raise TrainingDiverged(
            f"{message}; learning rate {row['lr']:.4g}. {where}; lower base_lr or check the "
            "data scaling",
            str(saved_at) if saved_at else None,
        )

    # -- testing ------------------------------------------------------------------------
    def _test(self) -> None:
        if not self.lead:
            return
        row: dict[str, float] = {"iter": self.solver.iter}
        for k, tnet in enumerate(self.solver.test_nets):
            tnet.share_with(self.solver.net)
            n = self.param.test_iter[k]
            scalars = [b for b in tnet.outputs if tnet.blobs[b].count == 1]
            sums = dict.fromkeys(scalars, 0.0)
            for i in range(n):
                if tnet.inputs:
                    assert self.settings.test_batch_fn is not None  # checked before training
                    self._feed(tnet, self.settings.test_batch_fn(i), f"test_batch_fn({i})")
                tnet.forward()
                for b in scalars:
                    sums[b] += float(tnet.blobs[b].data.flat[0])
            tag = "" if k == 0 else f"test{k}/"
            row.update({f"{tag}{b}": s / max(n, 1) for b, s in sums.items()})
            bad = [b for b, s in sums.items() if not math.isfinite(s)]
            if bad:  # Caffe's Accuracy counts NaN logits as correct: never report that
                raise TrainError(
                    f"test net {k} output(s) {', '.join(bad)} are not finite at iteration "
                    f"{self.solver.iter}: the weights or the test data hold NaN/inf"
                )
        row.update({name: row[blob] for name, blob in self._headline.items()})
        self.test_rows.append(row)
        shown = {k: row[k] for k in self.summary_accuracy_names if k in row} or {
            k: v for k, v in row.items() if k != "iter"
        }
        text = ", ".join(f"{k} {v:.4f}" for k, v in shown.items())
        if self.settings.progress:
            tqdm.write(f"[test] iteration {row['iter']}: {text}", file=sys.stderr)
        self.write_metrics(plot=False)

    # -- snapshots ----------------------------------------------------------------------
    def snapshot(self) -> None:
        """Save a snapshot at the current iteration, unless one was just saved there."""
        last = self.last_snapshot
        if self.lead and (last is None or last.iteration != self.solver.iter):
            self.last_snapshot = save_snapshot(self.solver, self.tmp, self.out, self.name)
            self.write_metrics(plot=False)

    def resume(self) -> None:
        """Continue from the newest complete snapshot in OUT, with the metric histories it
        had seen, if it is not past ``max_iter``."""
        shapes = net_param_shapes([self.solver.net])
        snap = resumable_snapshot(self.out, self.name, shapes)
        restore_snapshot(self.solver, snap, self.tmp)
        self.last_snapshot = snap
        history = load_history(self.out, snap.iteration)
        if history is not None:
            self.train_rows, self.test_rows = history
        max_iter = self.settings.max_iter
        if self.solver.iter > max_iter:
            raise TrainError(
                f"{self.out} is already at iteration {self.solver.iter}, past --max-iter "
                f"{max_iter}: nothing to resume"
            )

    # -- outputs ------------------------------------------------------------------------
    def final_metrics(self) -> dict[str, float]:
        """The summary of the run so far (see :func:`pyirg.train.folder.final_metrics`)."""
        return final_metrics(
            self.solver.iter, self.train_rows, self.test_rows, self.summary_accuracy_names
        )

    def write_metrics(self, *, plot: bool) -> None:
        """Rewrite the metric files in OUT; the PNG only when ``plot``."""
        if not self.lead:
            return
        write_metrics(
            self.out,
            self.run_info,
            self.final_metrics(),
            self.train_rows,
            self.test_rows,
            plot=plot,
            loss_names=self.loss_terms,
            accuracy_names=self.accuracy_blobs,
        )

    def result(self, *, interrupted: bool) -> TrainResult:
        """The run so far as a :class:`TrainResult`."""
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
        """Train to ``max_iter``, then test and snapshot; on a signal, snapshot and raise."""
        solver, s = self.solver, self.settings
        bar = tqdm(
            total=s.max_iter,
            initial=solver.iter,
            disable=not s.progress,
            desc=self.out.name,
            unit="it",
            dynamic_ncols=True,
        )
        if s.on_iteration is not None:
            s.on_iteration(solver.iter, solver.net)
        with stop_on_signals() as stop, bar:
            try:
                while solver.iter < s.max_iter and stop.signum is None:
                    self._train_one(bar)
                    it = solver.iter
                    if s.test_interval and solver.test_nets and it % s.test_interval == 0:
                        self._test()
                    if s.snapshot_interval and it % s.snapshot_interval == 0:
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
                self._test()
            self.snapshot()
            self.write_metrics(plot=True)
        return self.result(interrupted=False)


class BatchFeeder:
    """Puts ``{blob: array}`` batches into pycaffe nets, checking what Caffe would not.

    SoftmaxWithLoss reads scores[label] unchecked in a release build: a label past the
    net's class count corrupts memory (glibc then aborts with "double free"), so the
    labels of each loss and accuracy are checked against its class count.
    """

    def __init__(self, net_param: Any) -> None:
        #: layer -> (class axis, ignore_label) of the losses and accuracies (from the net).
        self.label_rules = label_rules(net_param)
        self._ranges: dict[int, dict[str, tuple[str, int, int | None]]] = {}

    def __call__(self, net: Any, batch: Mapping[str, np.ndarray], what: str) -> None:
        """Copy ``batch`` into ``net``'s blobs (reshaped to it); ``what`` names it in errors."""
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
        self._check_labels(net, batch, what)

    def _label_ranges(self, net: Any) -> dict[str, tuple[str, int, int | None]]:
        """label blob -> (layer, classes, ignore_label) for the layers that index by label."""
        ranges: dict[str, tuple[str, int, int | None]] = {}
        bottom_names = net.bottom_names
        for name, layer in zip(net._layer_names, net.layers):
            bottoms = bottom_names[name]
            if layer.type in ("SoftmaxWithLoss", "Accuracy") and len(bottoms) >= 2:
                axis, ignore = self.label_rules.get(name, (1, None))
                scores = net.blobs[bottoms[0]].data
                if -scores.ndim <= axis < scores.ndim:
                    classes = int(scores.shape[axis])
                    ranges.setdefault(bottoms[1], (name, classes, ignore))
        return ranges

    def _check_labels(self, net: Any, batch: Mapping[str, np.ndarray], what: str) -> None:
        if id(net) not in self._ranges:
            self._ranges[id(net)] = self._label_ranges(net)
        for blob, (layer, classes, ignore) in self._ranges[id(net)].items():
            if blob not in batch:
                continue
            labels = np.asarray(batch[blob])
            if ignore is not None:
                labels = labels[labels != ignore]  # Caffe skips these
            if labels.size and (labels.min() < 0 or labels.max() >= classes):
                raise TrainError(
                    f"{what}: labels in '{blob}' span {labels.min():g}..{labels.max():g}, but "
                    f"layer '{layer}' scores {classes} classes (0..{classes - 1}): the data "
                    "has more classes than the net (check --num-classes)"
                )


@dataclass
class StopRequest:
    """The signal that asked the run to stop, or None while none has."""

    signum: int | None = None


@contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """First SIGINT/SIGTERM: ask the loop to stop; second: stop now (KeyboardInterrupt)."""
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop  # signal handlers can only be installed from the main thread
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if stop.signum is not None:
            raise KeyboardInterrupt
        stop.signum = signum

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def label_rules(net_param: Any) -> dict[str, tuple[int, int | None]]:
    """layer -> (class axis, ignore_label) of each SoftmaxWithLoss and Accuracy."""
    rules: dict[str, tuple[int, int | None]] = {}
    for layer in net_param.layer:
        if layer.type == "SoftmaxWithLoss":
            ignore = (
                layer.loss_param.ignore_label if layer.loss_param.HasField("ignore_label") else None
            )
            rules[layer.name] = (layer.softmax_param.axis, ignore)
        elif layer.type == "Accuracy":
            ap = layer.accuracy_param
            rules[layer.name] = (ap.axis, ap.ignore_label if ap.HasField("ignore_label") else None)
    return rules
