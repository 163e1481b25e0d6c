"""``train()``: check everything that would make Caffe abort or train wrongly, then run.

Caffe's own periodic testing and snapshotting are switched off in the solver the
driver runs (written to OUT as ``solver.effective.prototxt``); the loop does
both itself, at ``test_interval`` and ``snapshot`` (or the overrides given).
"""

from __future__ import annotations

import random
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import text_format

from pyirg.data.fsutil import atomic_write_text
from pyirg.train.common import (
    DEFAULT_STUDENT_PREFIX,
    BatchFn,
    PathLike,
    caffe_has_cuda,
    import_caffe,
)
from pyirg.train.errors import TrainError
from pyirg.train.loop import TrainingRun
from pyirg.train.preflight import run_preflight
from pyirg.train.record import check_resume_settings, claim_run_folder, record_run, run_settings
from pyirg.train.results import TrainResult
from pyirg.train.snapshots import (
    TMP_PREFIX,
    latest_snapshot,
    remove_stale_tmp,
    snapshot_name,
    snapshot_pairs,
    snapshot_problem,
)
from pyirg.train.solver_param import prepare_solver_param
from pyirg.train.weights import load_init_weights, load_teacher, net_param_shapes

EFFECTIVE_SOLVER = "solver.effective.prototxt"
#: Caffe tests when ``iter % test_interval == 0``; this interval is never reached.
_NEVER = 2**31 - 1


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


def resumable_snapshot(out: Path, name: str, shapes: dict[str, list[tuple[int, ...]]]) -> Any:
    """The newest complete snapshot pair in ``out``; older ones are fallen back to with a
    notice when the newest is truncated (a kill while writing, a full disk)."""
    for snap in snapshot_pairs(out, name):
        problem = snapshot_problem(snap, shapes)
        if problem is None:
            return snap
        print(f"notice: not resuming from iteration {snap.iteration}: {problem}", file=sys.stderr)
    raise TrainError(f"{out}: no complete snapshot '{name}_iter_*' to resume from")


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
    init_weights: PathLike | None = None,
    on_iteration: Callable[[int, Any], None] | None = None,
    overwrite: bool = False,
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
    snapshot on SIGINT/SIGTERM.  ``init_weights``: a .caffemodel the trained layers
    start from instead of their fillers (every one of them must be in it), so that
    runs of several nets can start from identical weights; ignored when resuming.
    ``out_dir`` records the run's settings (``run.json``): a folder holding another run is
    refused, and resumed only with the same settings; ``overwrite`` moves it aside first.
    ``on_iteration(i, net)`` is called with the iterations done and the train net, before
    the first iteration and after each one.
    """
    caffe = import_caffe()
    pb = caffe.proto.caffe_pb2
    out = Path(out_dir).resolve()
    claim_run_folder(out, resume=resume, overwrite=overwrite)
    param, net_param, source = prepare_solver_param(solver, net, out_dir=out)
    if preflight:
        for warning in run_preflight(net_param, source, student_prefix=student_prefix):
            print(f"warning: {source}: {warning}", file=sys.stderr)

    max_iter = param.max_iter if max_iter is None else max_iter
    if max_iter <= 0:
        raise TrainError(f"max_iter must be positive, got {max_iter}")
    if seed < 0:
        raise TrainError(f"--seed must be >= 0 (Caffe's random seed is unsigned), got {seed}")
    test_interval = param.test_interval if test_interval is None else test_interval
    snapshot_interval = param.snapshot if snapshot_interval is None else snapshot_interval
    if test_interval < 0 or snapshot_interval < 0:
        raise TrainError("test_interval and snapshot_interval must be >= 0")
    if batch_fn is not None and param.iter_size > 1:
        raise TrainError("batch_fn feeds one batch per iteration; iter_size > 1 would reuse it")
    name = snapshot_name(param.snapshot_prefix)
    settings = run_settings(
        param,
        net_param,
        seed=seed,
        teacher_weights=None if teacher_weights is None else str(teacher_weights),
        init_weights=None if init_weights is None or resume else str(init_weights),
        student_prefix=student_prefix,
    )
    if resume:
        check_resume_settings(out, settings)
    existing = latest_snapshot(out, name)
    if existing is not None and not resume:
        raise TrainError(
            f"{out} already holds snapshot {existing.solverstate.name}; "
            "pass --resume to continue from it, or choose another --out"
        )

    remove_stale_tmp(out)
    tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=out))
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
        elif not caffe_has_cuda():
            raise TrainError(
                f"--gpu {gpu}: this Caffe ({Path(caffe.__file__).resolve().parents[2]}) is a "
                "CPU_ONLY build; train on the CPU, or build it with CUDA (build_caffe.sh --cuda)"
            )
        else:
            caffe.set_device(gpu)
            caffe.set_mode_gpu()
        caffe.set_random_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        csolver = caffe.get_solver(str(solver_file))

        resuming = resume and existing is not None
        if init_weights is not None and not resuming:
            load_init_weights(csolver, init_weights, student_prefix)
        distill, _ = load_teacher(
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
            "init_weights": str(init_weights) if init_weights else None,
        }
        run = TrainingRun(
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
            on_iteration=on_iteration,
            label_rules=label_rules(net_param),
            track_finite=gpu is None,
        )
        if test_interval and not csolver.test_nets:
            print(
                f"notice: {source}: the solver has no test_iter, so there is no test net: "
                "no periodic tests and no accuracy (add test_iter to the solver)",
                file=sys.stderr,
            )
        if resuming:
            run.restore(resumable_snapshot(out, name, net_param_shapes([csolver.net])))
            if csolver.iter > max_iter:
                raise TrainError(
                    f"{out} is already at iteration {csolver.iter}, past --max-iter {max_iter}: "
                    "nothing to resume"
                )
        elif resume:
            print(
                f"notice: {out} holds no snapshot '{name}_iter_*': starting at 0", file=sys.stderr
            )
        record_run(out, settings)
        return run.run()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
