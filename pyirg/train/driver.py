"""``train()``: check everything that would make Caffe abort or train wrongly, then run.

Caffe's own periodic testing and snapshotting are switched off in the solver the
driver runs (written to OUT as ``solver.effective.prototxt``); the loop does
both itself, at ``test_interval`` and ``snapshot`` (or the overrides given).
Caffe resolves a solver's relative paths from the cwd and aborts the process when
one is missing; resolving them here first turns that into a :class:`TrainError`
naming the file, and lets a solver refer to files next to itself.
"""

from __future__ import annotations

import dataclasses
import random
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pyirg.caffeio import (
    CaffeFileError,
    PathLike,
    caffe_has_cuda,
    caffe_proto,
    import_caffe,
    read_net,
    read_solver,
    write_text,
)
from pyirg.data.feed import BatchFn
from pyirg.distill import STUDENT_PREFIX
from pyirg.options import flag_name, option
from pyirg.train import PreflightError, TrainError, TrainResult
from pyirg.train.folder import (
    RUN_FILE,
    TMP_PREFIX,
    check_run_folder,
    claim_run_folder,
    record_run,
    run_settings,
    snapshot_name,
)
from pyirg.train.loop import TrainingRun
from pyirg.train.weights import load_init_weights, load_teacher

EFFECTIVE_SOLVER = "solver.effective.prototxt"
#: Caffe tests when ``iter % test_interval == 0``; this interval is never reached.
_NEVER = 2**31 - 1


@dataclass
class TrainSettings:
    """How a run trains: all that :func:`train` takes besides the solver and OUT.

    Declared once: ``pyirg train`` makes its flags from the fields with help
    (:mod:`pyirg.options`), and :class:`~pyirg.train.loop.TrainingRun` reads them, so a
    setting cannot exist in one place and be missing in another.
    """

    #: From Python also a NetParameter (written to OUT/net.prototxt).
    net: Path | None = option(None, "net .prototxt (replaces the solver's net)")
    teacher_weights: Path | None = option(None, "teacher .caffemodel (distillation)")
    init_weights: Path | None = option(
        None,
        "a .caffemodel the trained layers start from (by layer name) instead of their "
        "fillers; every trained layer must be in it (like caffe train --weights)",
    )
    seed: int = option(0, "random seed (Caffe, numpy, batches)")
    resume: bool = option(False, "continue from the latest snapshot")
    overwrite: bool = option(
        False, "move a previous run in --out aside (to OUT.replaced-DATE) and start afresh"
    )
    max_iter: int | None = option(None, "override the solver's max_iter (else its own)")
    test_interval: int | None = option(None, "override test_interval (0: only at end)")
    snapshot_interval: int | None = option(None, "override snapshot (0: only at end)")
    student_prefix: str = option(
        STUDENT_PREFIX, "name prefix of the student's layers in a distillation net"
    )
    gpu: int | None = option(None, "GPU id (default: CPU)")
    gpus: str | None = option(
        None,
        "GPU ids, e.g. 0,1: one solver per GPU, gradients averaged by NCCL (each GPU takes "
        "its own batch; pyirg.train.multi_gpu)",
    )
    progress: bool = option(True, "show a progress bar")
    preflight: bool = option(True, "run the pre-flight checks (pyirg.check) first")
    #: Input-fed nets: ``batch_fn(iteration)`` and ``test_batch_fn(batch index)`` give
    #: ``{blob name: array}``; deterministic in their argument for ``resume`` to
    #: reproduce an uninterrupted run.
    batch_fn: BatchFn | None = None
    test_batch_fn: BatchFn | None = None
    #: Called with the iterations done and the train net, before the first iteration
    #: and after each one.
    on_iteration: Callable[[int, Any], None] | None = None
    #: Set by pyirg.train.multi_gpu in each solver's process: its rank, the number of
    #: solvers and the NCCL session; only rank 0 writes to OUT.
    solver_rank: int = 0
    solver_count: int = 1
    nccl_uid: bytes | None = None


def train(
    solver: PathLike | Any,
    out_dir: PathLike,
    settings: TrainSettings | None = None,
    **overrides: Any,
) -> TrainResult:
    """Train the solver's net (or ``net``) into ``out_dir`` and return the final metrics.

    ``solver``: a solver .prototxt path or a SolverParameter; ``settings`` (or keyword
    overrides of its fields, e.g. ``train(solver, out, seed=3)``): a :class:`TrainSettings`.
    A ``test_interval`` or ``snapshot_interval`` of 0 disables the periodic ones; the end
    of training always tests and snapshots. Snapshots are ``out_dir/<basename of the
    solver's snapshot_prefix, default "snapshot">_iter_N.{caffemodel,solverstate}``. Test
    outputs are averaged over ``test_iter`` batches of each test net, which shares the
    train net's weights. ``init_weights`` lets runs of several nets start from identical
    weights; it is ignored when resuming. ``out_dir`` records the run's settings
    (``run.json``): a folder holding another run is refused, and resumed only with the
    same settings; ``overwrite`` moves it aside first.

    Raises :class:`TrainError` (or a subclass) before training when the setup is wrong,
    :class:`~pyirg.train.TrainingInterrupted` after saving a snapshot on SIGINT/SIGTERM.
    """
    s = dataclasses.replace(settings or TrainSettings(), **overrides)
    if s.gpus is not None:
        from pyirg.train.multi_gpu import train_on_gpus

        return train_on_gpus(solver, out_dir, s)
    caffe = import_caffe()
    out = Path(out_dir).resolve()
    lead = s.solver_rank == 0  # the one process that writes to OUT
    # The outermost folder this call creates: a start refused before the first iteration
    # takes back the files it wrote and the folders it made, so a typo leaves no empty or
    # half-written run folder behind (and a rerun is not "already holds a run").
    created = next((p for p in reversed([out, *out.parents]) if not p.exists()), None)
    written: list[Path] = []
    try:
        return _train(caffe, solver, out, s, lead, written)
    except TrainError as e:
        if lead and created is not None and not e.started:
            _take_back(written, out, created)
        raise


def _take_back(written: list[Path], out: Path, created: Path) -> None:
    """Remove the files a refused start wrote, then ``out`` and its parents up to
    ``created`` while each is empty: never a file it did not write (another run started
    beside it may be using the same parents)."""
    for path in written:
        path.unlink(missing_ok=True)
    for folder in (out, *out.parents):
        try:
            folder.rmdir()
        except OSError:  # not empty: someone else's files are in it
            return
        if folder == created:
            return


def _train(
    caffe: Any, solver: PathLike | Any, out: Path, s: TrainSettings, lead: bool, written: list
) -> Any:
    """:func:`train` after the settings are merged: set-up, then the loop. ``written``
    collects the files set-up writes into ``out``; a TrainError raised once an iteration
    has run is marked ``started`` (its folder holds the run so far)."""
    if lead:
        claim_run_folder(out, resume=s.resume, overwrite=s.overwrite)
    if isinstance(s.net, caffe_proto().NetParameter):
        written.append(out / "net.prototxt")
    param, net_param, source = prepare_solver_param(solver, s.net, out_dir=out)
    if s.preflight:
        warnings = run_preflight(
            net_param, source, student_prefix=s.student_prefix, test_iter=list(param.test_iter)
        )
        for warning in warnings:
            print(f"warning: {source}: {warning}", file=sys.stderr)
    s = _resolved(s, param)
    name = snapshot_name(param.snapshot_prefix)
    record = run_settings(param, net_param, s)
    existing = check_run_folder(out, name, record, resume=s.resume, lead=lead)
    tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=out if lead else None))
    try:
        written.append(out / EFFECTIVE_SOLVER)
        csolver = _build_solver(caffe, param, s, out / EFFECTIVE_SOLVER, tmp / name)
        resuming = s.resume and existing is not None
        if s.init_weights is not None and not resuming:
            load_init_weights(csolver, s.init_weights, s.student_prefix)
        distill = load_teacher(
            csolver, s.teacher_weights, s.student_prefix, source, required=not resuming
        )
        _check_feeds(csolver, s, source)
        info = _run_info(solver, source, s, distill)
        run = TrainingRun(csolver, param, out, tmp, name, s, distill, info, net_param)
        if resuming:
            run.resume()
        elif s.resume and lead:
            print(
                f"notice: {out} holds no snapshot '{name}_iter_*': starting at 0", file=sys.stderr
            )
        if s.solver_count > 1:
            from pyirg.train.multi_gpu import join_nccl

            run.nccl = join_nccl(caffe, csolver, s.nccl_uid)
        if lead:
            written.append(out / RUN_FILE)
            record_run(out, record)
        try:
            return run.run()
        except TrainError as e:
            e.started = csolver.iter > 0  # a first batch refused: nothing trained yet
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run_info(solver: Any, source: str, s: TrainSettings, distill: bool) -> dict[str, Any]:
    """What metrics.json says about the run."""
    given = isinstance(solver, caffe_proto().SolverParameter)
    return {
        "solver": "<param>" if given else str(solver),
        "net": source,
        "teacher_weights": str(s.teacher_weights) if s.teacher_weights else None,
        "seed": s.seed,
        "max_iter": s.max_iter,
        "student_prefix": s.student_prefix,
        "distillation": distill,
        "init_weights": str(s.init_weights) if s.init_weights else None,
    }


def _resolved(given: TrainSettings, param: Any) -> TrainSettings:
    """``given`` with the solver's own values where no override was given, all checked."""
    own = {
        "max_iter": param.max_iter,
        "test_interval": param.test_interval,
        "snapshot_interval": param.snapshot,
    }
    s = dataclasses.replace(given, **{k: v for k, v in own.items() if getattr(given, k) is None})
    for name, least in (("max_iter", 1), ("test_interval", 0), ("snapshot_interval", 0)):
        if getattr(s, name) < least:  # named as the option given, else the solver's field
            field = "snapshot" if name == "snapshot_interval" else name
            what = f"the solver's {field}" if getattr(given, name) is None else flag_name(name)
            raise TrainError(f"{what} must be >= {least}, got {getattr(s, name)}")
    if s.seed < 0:
        raise TrainError(f"--seed must be >= 0 (Caffe's random seed is unsigned), got {s.seed}")
    if s.batch_fn is not None and param.iter_size > 1:
        raise TrainError("batch_fn feeds one batch per iteration; iter_size > 1 would reuse it")
    return s


def _build_solver(caffe: Any, param: Any, s: TrainSettings, path: Path, prefix: Path) -> Any:
    """The pycaffe solver of ``param`` with Caffe's own testing and snapshots off (the loop
    does both), on the device and with the seeds asked for; written to ``path``."""
    param.snapshot_prefix = str(prefix)
    param.snapshot = 0
    param.snapshot_after_train = False
    param.snapshot_format = caffe_proto().SolverParameter.BINARYPROTO
    param.random_seed = s.seed
    param.max_iter = s.max_iter
    param.test_interval = _NEVER
    param.test_initialization = False
    param.display = 0
    header = "# Written by pyirg.train: testing and snapshots are done by the driver.\n"
    write_text(path, param, header)
    if s.gpu is None:
        caffe.set_mode_cpu()
    elif not caffe_has_cuda():
        raise TrainError(
            f"--gpu {s.gpu}: this Caffe ({Path(caffe.__file__).resolve().parents[2]}) is a "
            "CPU_ONLY build; train on the CPU, or build it with CUDA (build_caffe.sh --cuda)"
        )
    else:
        caffe.set_device(s.gpu)
        caffe.set_mode_gpu()
        if s.solver_count > 1:  # one of pyirg.train.multi_gpu's solvers
            caffe.set_solver_count(s.solver_count)
            caffe.set_solver_rank(s.solver_rank)
            caffe.set_multiprocess(True)
    caffe.set_random_seed(s.seed)
    np.random.seed(s.seed)
    random.seed(s.seed)
    return caffe.get_solver(str(path))


def _check_feeds(csolver: Any, s: TrainSettings, source: str) -> None:
    """Input-fed nets need their batch functions; a solver without test_iter has no tests."""
    if csolver.net.inputs and s.batch_fn is None:
        raise TrainError(
            f"{source}: the train net is Input-fed ({', '.join(csolver.net.inputs)}) "
            "but no batch_fn was given (pyirg train: --npy-data DIR, a prepare-data folder)"
        )
    if any(t.inputs for t in csolver.test_nets) and s.test_batch_fn is None:
        raise TrainError(
            f"{source}: the test net is Input-fed but no test_batch_fn was given "
            "(pyirg train: --npy-data DIR, a prepare-data folder)"
        )
    if s.test_interval and not csolver.test_nets:
        print(
            f"notice: {source}: the solver has no test_iter, so there is no test net: "
            "no periodic tests and no accuracy (add test_iter to the solver)",
            file=sys.stderr,
        )


def run_preflight(
    net_param: Any,
    source: str,
    *,
    student_prefix: str = STUDENT_PREFIX,
    test_iter: Sequence[int] = (),
) -> list[str]:
    """Run :mod:`pyirg.check` on the net, so a broken net fails with a message instead of a
    Caffe abort (or a run that trains the wrong thing): raise :class:`PreflightError`
    listing its errors; return its warnings, with whether a test pass reads its LMDB once
    (``test_iter``: the solver's; checked when it has one test net, the net's TEST phase)."""
    from pyirg.check import check_net, lmdb_test_coverage

    problems = check_net(net_param, student_prefix=student_prefix)
    errors = [str(p) for p in problems if p.is_error]
    if errors:
        raise PreflightError(f"{source}: pre-flight check failed:\n  " + "\n  ".join(errors))
    warnings = [str(p) for p in problems if not p.is_error]
    if len(test_iter) == 1:
        warnings += lmdb_test_coverage(net_param, test_iter[0])
    return warnings


# ----------------------------------------------------------------------------- the solver


def _read(read: Callable[[Path], Any], path: Path) -> Any:
    try:
        return read(path)
    except CaffeFileError as e:
        raise TrainError(str(e)) from e


def load_solver_param(solver: PathLike | Any) -> tuple[Any, Path | None]:
    """Return a copy of the SolverParameter and the directory of its file (if any)."""
    if isinstance(solver, caffe_proto().SolverParameter):
        param = type(solver)()
        param.CopyFrom(solver)
        return param, None
    path = Path(solver)
    return _read(read_solver, path), path.resolve().parent


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

    Returns (solver parameter, train NetParameter, a name for messages). A
    NetParameter given as ``net`` is written to ``out_dir/net.prototxt``.
    """
    param, base = load_solver_param(solver)
    if net is not None:
        if isinstance(net, caffe_proto().NetParameter):
            if out_dir is None:
                raise ValueError("a NetParameter net needs an out_dir to be written to")
            net_path = out_dir / "net.prototxt"
            write_text(net_path, net)
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
    return param, _read(read_net, Path(path)), path
