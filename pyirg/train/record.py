"""What a run folder holds: the settings it was trained with (``run.json``).

Why: a folder of snapshots and metrics says nothing about the solver, net, seed or
weights that made it, so reusing an ``--out`` could resume a different run or overwrite
another run's records. The record lets ``train`` resume only the same run, refuse
anything else naming the difference, and move a whole run folder aside on request.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from pathlib import Path
from typing import Any

from google.protobuf import text_format

from pyirg.train.errors import TrainError

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


def _digest(path: str | None) -> str | None:
    if not path:
        return None
    from pyirg.data.fsutil import regular_file

    try:
        return hashlib.sha256(regular_file(path, "weights").read_bytes()).hexdigest()[:16]
    except (OSError, ValueError) as e:  # a FIFO would block here forever
        raise TrainError(str(e)) from e


def run_settings(
    param: Any,
    net_param: Any,
    *,
    seed: int,
    teacher_weights: str | None,
    init_weights: str | None,
    student_prefix: str,
) -> dict[str, Any]:
    """The settings that decide what a run computes, as JSON-friendly values."""
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
    net_text = text_format.MessageToString(net)
    return {
        "solver": text_format.MessageToString(solver, as_one_line=True),
        "net_sha256": hashlib.sha256(net_text.encode()).hexdigest()[:16],
        "net_name": net_param.name,
        "seed": seed,
        "teacher_weights_sha256": _digest(teacher_weights),
        "init_weights_sha256": _digest(init_weights),
        "student_prefix": student_prefix,
    }


def is_run_folder(out: Path) -> bool:
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


def check_resume_settings(out: Path, settings: dict[str, Any]) -> None:
    """Resuming: the stored settings must match. Weights not given again are not compared
    (a resumed run takes them from its snapshot), and neither are the initial weights."""
    record = out / RUN_FILE
    if not record.is_file():
        return
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


def record_run(out: Path, settings: dict[str, Any]) -> None:
    """Write ``run.json`` (once: a resumed run keeps the record it was checked against)."""
    from pyirg.data.fsutil import atomic_write_text

    record = out / RUN_FILE
    if not record.is_file():
        atomic_write_text(record, json.dumps(settings, indent=2) + "\n")
