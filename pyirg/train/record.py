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
    net_text = text_format.MessageToString(net_param)
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


def prepare_run_folder(
    out: Path, settings: dict[str, Any], *, resume: bool, overwrite: bool
) -> None:
    """Refuse an ``out`` that holds another run (or, resuming, a run of other settings);
    with ``overwrite``, move an existing run folder aside first. The settings are recorded
    by :func:`record_run` once training really starts, so a run refused during set-up
    leaves no record behind."""
    if overwrite and out.exists() and any(out.iterdir()):
        if not is_run_folder(out):
            raise TrainError(f"--overwrite: {out} is no run folder (no {RUN_FILE}); not moved")
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        aside = out.with_name(f"{out.name}.replaced-{stamp}")
        out.rename(aside)
        print(f"notice: moved the previous run in {out} to {aside}")
    record = out / RUN_FILE
    if record.is_file():
        stored = json.loads(record.read_text())
        diff = [k for k in settings if stored.get(k) != settings[k]]
        if not resume:
            raise TrainError(
                f"{out} already holds a run; pass --resume to continue it, --overwrite to "
                "move it aside, or choose another --out"
            )
        if diff:
            details = "; ".join(f"{k}: {stored.get(k)!r} there, {settings[k]!r} now" for k in diff)
            raise TrainError(f"{out} holds a run of other settings, not resumed ({details})")
        return
    if is_run_folder(out) and not resume:
        raise TrainError(
            f"{out} holds the records of an earlier run (metrics.json); pass --overwrite to "
            "move them aside, or choose another --out"
        )
    out.mkdir(parents=True, exist_ok=True)


def record_run(out: Path, settings: dict[str, Any]) -> None:
    """Write ``run.json`` (once: a resumed run keeps the record it was checked against)."""
    record = out / RUN_FILE
    if not record.is_file():
        record.write_text(json.dumps(settings, indent=2) + "\n")
