"""What a run folder (OUT) holds, each file written so that a kill never leaves it half-done.

- ``run.json``: the settings the run was trained with. A folder of snapshots and metrics
  says nothing about the solver, net, seed or weights that made it; the record lets
  ``train`` resume only the same run, refuse anything else naming the difference, and
  move a whole run folder aside on request.
- Snapshots: Caffe writes them in place, so a kill during a write leaves a truncated
  .caffemodel that looks complete. Here Caffe writes into a temporary prefix inside OUT
  and the files are renamed into place, the .solverstate last (with its ``learned_net``
  pointing at the final .caffemodel): its presence marks a snapshot complete.
- Metrics (JSON, CSV, PNG), rewritten atomically; metrics.json is also what a resumed
  run reads its histories back from, so a resumed run's files continue the interrupted
  run's.
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import json
import math
import os
import re
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyirg.caffeio import PathLike, caffe_proto, to_text
from pyirg.data.fsutil import atomic_output, atomic_write_text, fsync_file, regular_file
from pyirg.train import Snapshot, TeacherWeightsError, TrainError
from pyirg.train.weights import NetShapes, check_weights

if TYPE_CHECKING:
    from pyirg.train.driver import TrainSettings

RUN_FILE = "run.json"
#: Files whose presence makes a folder a run folder (older runs have no run.json).
RUN_MARKERS = (RUN_FILE, "metrics.json")
#: Solver fields that may change between a run and its continuation (or that the
#: driver rewrites itself): they do not change what the iterations compute.
_FREE_SOLVER_FIELDS = (
    "max_iter", "snapshot", "snapshot_prefix", "snapshot_after_train", "snapshot_format",
    "test_interval", "test_initialization", "display", "net", "net_param", "random_seed",
    "test_iter",
)  # fmt: skip


def _digest(path: PathLike | None) -> str | None:
    if not path:
        return None
    try:
        return hashlib.sha256(regular_file(path, "weights").read_bytes()).hexdigest()[:16]
    except (OSError, ValueError) as e:  # a FIFO would block here forever
        raise TrainError(str(e)) from e


def run_settings(param: Any, net_param: Any, settings: TrainSettings) -> dict[str, Any]:
    """The settings that decide what a run computes, as JSON-friendly values (a resumed
    run's initial weights come from its snapshot, so they are not recorded then)."""
    solver = type(param)()
    solver.CopyFrom(param)
    for name in _FREE_SOLVER_FIELDS:
        solver.ClearField(name)
    net = type(net_param)()
    net.CopyFrom(net_param)
    for layer in net.layer:  # where the data lies may move between a run and its resume
        for field in ("data_param", "image_data_param", "hdf5_data_param"):
            if layer.HasField(field):
                getattr(layer, field).ClearField("source")
        layer.transform_param.ClearField("mean_file")
    net_text = to_text(net)
    return {
        "solver": to_text(solver, as_one_line=True),
        "net_sha256": hashlib.sha256(net_text.encode()).hexdigest()[:16],
        "net_name": net_param.name,
        "seed": settings.seed,
        "teacher_weights_sha256": _digest(settings.teacher_weights),
        "init_weights_sha256": None if settings.resume else _digest(settings.init_weights),
        "student_prefix": settings.student_prefix,
    }


def is_run_folder(out: Path) -> bool:
    """Whether ``out`` holds a run (its record, or the metrics of a run from before it)."""
    return any((out / marker).is_file() for marker in RUN_MARKERS)


def claim_run_folder(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Before anything is written into ``out``: with ``overwrite``, move a previous run
    folder aside; without ``resume``, refuse a folder that holds another run."""
    if overwrite and resume:
        raise TrainError("--overwrite starts afresh and --resume continues: choose one")
    if overwrite and out.exists() and any(out.iterdir()):
        if not is_run_folder(out):
            raise TrainError(f"--overwrite: {out} is no run folder (no {RUN_FILE}); not moved")
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        aside = out.with_name(f"{out.name}.replaced-{stamp}")
        out.rename(aside)
        print(f"notice: moved the previous run in {out} to {aside}")
    if is_run_folder(out) and not resume:
        raise TrainError(
            f"{out} already holds a run; pass --resume to continue it, --overwrite to "
            "move it aside, or choose another --out"
        )
    out.mkdir(parents=True, exist_ok=True)


def check_run_folder(
    out: Path, name: str, settings: dict[str, Any], *, resume: bool, lead: bool
) -> Snapshot | None:
    """The latest snapshot in ``out`` (None: start at 0), once a resumed run is found to
    have the stored settings and a new one no snapshot; the lead process (the one that
    writes OUT) also removes what a killed run left. Weights not given again are not
    compared (a resumed run takes them from its snapshot), nor are the initial weights."""
    record = out / RUN_FILE
    if resume and lead and record.is_file():
        try:
            stored = json.loads(record.read_text())
        except (OSError, ValueError) as e:
            raise TrainError(f"{record}: unreadable run record ({e}); move the folder aside") from e
        skip = {"init_weights_sha256"}
        if settings.get("teacher_weights_sha256") is None:
            skip.add("teacher_weights_sha256")
        diff = [k for k in settings if k not in skip and stored.get(k) != settings[k]]
        if diff:
            details = "; ".join(f"{k}: {stored.get(k)!r} there, {settings[k]!r} now" for k in diff)
            raise TrainError(f"{out} holds a run of other settings, not resumed ({details})")
    existing = latest_snapshot(out, name)
    if existing is not None and not resume:
        raise TrainError(
            f"{out} already holds snapshot {existing.solverstate.name}; "
            "pass --resume to continue from it, or choose another --out"
        )
    if lead:
        remove_stale_tmp(out)
    return existing


def record_run(out: Path, settings: dict[str, Any]) -> None:
    """Write ``run.json`` (once: a resumed run keeps the record it was checked against)."""
    record = out / RUN_FILE
    if not record.is_file():
        atomic_write_text(record, json.dumps(settings, indent=2) + "\n")


#: Prefix of the temporary directory inside OUT that Caffe writes snapshots into.
TMP_PREFIX = ".snapshot-tmp-"


def snapshot_pairs(out_dir: PathLike, name: str = "snapshot") -> list[Snapshot]:
    """Every (.caffemodel, .solverstate) pair in OUT, the highest iteration first."""
    out = Path(out_dir)
    if not out.is_dir():
        return []
    pattern = re.compile(rf"^{re.escape(name)}_iter_(\d+)\.solverstate$")
    pairs = []
    for path in out.iterdir():
        m = pattern.match(path.name)
        if m and path.with_suffix(".caffemodel").is_file():
            pairs.append(Snapshot(int(m.group(1)), path.with_suffix(".caffemodel"), path))
    return sorted(pairs, key=lambda s: -s.iteration)


def latest_snapshot(out_dir: PathLike, name: str = "snapshot") -> Snapshot | None:
    """The snapshot pair (.caffemodel and .solverstate) with the highest iteration."""
    pairs = snapshot_pairs(out_dir, name)
    return pairs[0] if pairs else None


def snapshot_problem(snap: Snapshot, shapes: NetShapes) -> str | None:
    """Why ``snap`` cannot be resumed from, or None when it is complete.

    Complete: the .caffemodel holds every layer with parameters with the net's shapes
    (a file cut at a layer boundary still parses, and Caffe would keep the missing
    layers' random initialisation), and the .solverstate parses, is at the snapshot's
    iteration and has its last field: Caffe always sets ``current_step`` (field 4, after
    the history blobs), so a file cut anywhere after ``iter`` lacks it (Caffe would abort
    on the missing history).
    """
    try:
        check_weights(shapes, snap.caffemodel, required=list(shapes), role="net")
    except TeacherWeightsError as e:
        return str(e)
    try:
        state = caffe_proto().SolverState.FromString(snap.solverstate.read_bytes())
    except Exception as e:  # protobuf's DecodeError differs between implementations
        return f"{snap.solverstate}: unreadable ({e})"
    if state.iter != snap.iteration or not state.HasField("current_step"):
        return (
            f"{snap.solverstate}: incomplete (cut short after {len(state.history)} history blobs)"
        )
    return None


def resumable_snapshot(out: Path, name: str, shapes: NetShapes) -> Snapshot:
    """The newest complete snapshot pair in ``out``; older ones are fallen back to with a
    notice when the newest is truncated (a kill while writing, a full disk)."""
    for snap in snapshot_pairs(out, name):
        problem = snapshot_problem(snap, shapes)
        if problem is None:
            return snap
        print(f"notice: not resuming from iteration {snap.iteration}: {problem}", file=sys.stderr)
    raise TrainError(f"{out}: no complete snapshot '{name}_iter_*' to resume from")


def snapshot_name(prefix: str) -> str:
    """The file name stem of snapshots: the basename of the solver's ``snapshot_prefix``."""
    name = Path(prefix).name if prefix and not prefix.endswith("/") else ""
    return name or "snapshot"


def remove_stale_tmp(out: Path) -> None:
    """Remove what a killed run (SIGKILL, power loss) left under temporary names."""
    for path in out.glob(f"{TMP_PREFIX}*"):
        shutil.rmtree(path, ignore_errors=True)
    for path in out.glob(".*.tmp-*"):
        if path.is_file():
            path.unlink()


def save_snapshot(solver: Any, tmp: Path, out: Path, name: str) -> Snapshot:
    """Have Caffe snapshot into ``tmp`` (its snapshot_prefix) and move the files into ``out``."""
    it = solver.iter
    solver.snapshot()
    base = f"{name}_iter_{it}"
    tmp_model, tmp_state = tmp / f"{base}.caffemodel", tmp / f"{base}.solverstate"
    if not (tmp_model.is_file() and tmp_state.is_file()):
        raise TrainError(f"Caffe wrote no snapshot {tmp_model} / {tmp_state}")
    model, state_path = out / f"{base}.caffemodel", out / f"{base}.solverstate"
    state = caffe_proto().SolverState.FromString(tmp_state.read_bytes())
    state.learned_net = str(model)
    tmp_state.write_bytes(state.SerializeToString())
    fsync_file(tmp_model)
    fsync_file(tmp_state)
    os.replace(tmp_model, model)
    os.replace(tmp_state, state_path)  # last: its presence marks the snapshot complete
    return Snapshot(it, model, state_path)


def restore_snapshot(solver: Any, snap: Snapshot, tmp: Path) -> None:
    """Restore ``solver`` from ``snap``, wherever OUT has been moved since it was written."""
    state = caffe_proto().SolverState.FromString(snap.solverstate.read_bytes())
    state.learned_net = str(snap.caffemodel)  # OUT may have moved since it was written
    fixed = tmp / "resume.solverstate"
    fixed.write_bytes(state.SerializeToString())
    solver.restore(str(fixed))


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
    train_rows: Rows,
    test_rows: Rows,
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
