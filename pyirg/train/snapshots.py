"""Atomic snapshots: every snapshot in OUT is complete, whenever the run was killed.

Caffe writes snapshots in place, so a kill during a write leaves a truncated
.caffemodel that looks complete.  Here Caffe writes into a temporary prefix
inside OUT and the files are renamed into place, the .solverstate last (with
its ``learned_net`` pointing at the final .caffemodel): its presence marks a
snapshot complete.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

from pyirg.data.fsutil import fsync_file
from pyirg.train.common import PathLike, caffe_pb2
from pyirg.train.errors import TrainError
from pyirg.train.results import Snapshot

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
        if m and (out / f"{name}_iter_{m.group(1)}.caffemodel").is_file():
            it = int(m.group(1))
            pairs.append(Snapshot(it, out / f"{name}_iter_{it}.caffemodel", path))
    return sorted(pairs, key=lambda s: -s.iteration)


def latest_snapshot(out_dir: PathLike, name: str = "snapshot") -> Snapshot | None:
    """The snapshot pair (.caffemodel and .solverstate) with the highest iteration."""
    pairs = snapshot_pairs(out_dir, name)
    return pairs[0] if pairs else None


def snapshot_problem(snap: Snapshot, shapes: dict[str, list[tuple[int, ...]]]) -> str | None:
    """Why ``snap`` cannot be resumed from, or None when it is complete.

    Complete: the .caffemodel holds every layer with parameters with the net's shapes
    (a file cut at a layer boundary still parses, and Caffe would keep the missing
    layers' random initialisation), and the .solverstate parses, is at the snapshot's
    iteration and has its last field: Caffe always sets ``current_step`` (field 4, after
    the history blobs), so a file cut anywhere after ``iter`` lacks it (Caffe would abort
    on the missing history).
    """
    from pyirg.train.errors import TeacherWeightsError
    from pyirg.train.weights import check_weights

    try:
        check_weights(shapes, snap.caffemodel, required=list(shapes), role="net")
    except TeacherWeightsError as e:
        return str(e)
    try:
        state = caffe_pb2().SolverState.FromString(snap.solverstate.read_bytes())
    except Exception as e:  # protobuf's DecodeError differs between implementations
        return f"{snap.solverstate}: unreadable ({e})"
    if state.iter != snap.iteration or not state.HasField("current_step"):
        return (
            f"{snap.solverstate}: incomplete (cut short after {len(state.history)} history blobs)"
        )
    return None


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
    state = caffe_pb2().SolverState.FromString(tmp_state.read_bytes())
    state.learned_net = str(model)
    tmp_state.write_bytes(state.SerializeToString())
    fsync_file(tmp_model)
    fsync_file(tmp_state)
    os.replace(tmp_model, model)
    os.replace(tmp_state, state_path)  # last: its presence marks the snapshot complete
    return Snapshot(it, model, state_path)


def restore_snapshot(solver: Any, snap: Snapshot, tmp: Path) -> None:
    """Restore ``solver`` from ``snap``, wherever OUT has been moved since it was written."""
    state = caffe_pb2().SolverState.FromString(snap.solverstate.read_bytes())
    state.learned_net = str(snap.caffemodel)  # OUT may have moved since it was written
    fixed = tmp / "resume.solverstate"
    fixed.write_bytes(state.SerializeToString())
    solver.restore(str(fixed))
