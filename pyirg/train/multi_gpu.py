"""Caffe's multi-GPU training through pycaffe: one solver per GPU, gradients averaged by NCCL.

Why a process per GPU: that is how Caffe's own ``python/train.py`` drives NCCL (each
process sets its device, ``set_solver_count``/``set_solver_rank``/``set_multiprocess``,
joins one NCCL session by its uid, takes rank 0's weights with ``bcast`` and adds the
all-reduce as a solver callback). ``pyirg train --gpus 0,1`` does the same around
:func:`pyirg.train.driver.train`, so progress, tests, snapshots, resume and metrics are
one GPU's, written by rank 0; the other ranks only train.

What IRG sees: each GPU builds its graph over its own batch of N (weak scaling: the
global batch is N x GPUs), the gradients are averaged over the GPUs, and BatchNorm
statistics are each GPU's own. Each GPU reads distinct records: Caffe's Data layer
skips the records of the other ranks, and an Input-fed net's ``batch_fn`` gives rank r
batch ``iteration x GPUs + r`` (:func:`shard_batch_fn`). The graph is one GPU's batch:
to keep the paper's graph of N instances, keep each GPU's batch at N (the global batch
becomes N x GPUs, which may call for another learning rate); splitting the paper's
batch over K GPUs gives graphs of N / K, with another normalizer and coarser
knowledge. To relate all N x GPUs instances in one graph, use PyTorch's
``IRGLoss(graph="global")`` (``pyirg torch-train --graph global``).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import shutil
import subprocess
from pathlib import Path
from queue import Empty
from typing import Any

from pyirg.caffeio import caffe_has_cuda, import_caffe
from pyirg.data.feed import BatchFn
from pyirg.train import TrainError, TrainingInterrupted, TrainResult

#: ncclUniqueId's size: pycaffe's NCCL.new_uid() must return all of it.
NCCL_UID_BYTES = 128


def parse_gpus(text: str) -> tuple[int, ...]:
    """``"0,1"`` -> (0, 1); refuses empty, negative, non-integer or repeated ids."""
    parts = [p.strip() for p in text.split(",")]
    try:
        gpus = tuple(int(p) for p in parts)
    except ValueError:
        raise TrainError(f"--gpus {text!r}: give GPU ids separated by commas, e.g. 0,1") from None
    if not gpus or min(gpus) < 0:
        raise TrainError(f"--gpus {text!r}: GPU ids are >= 0")
    if len(set(gpus)) != len(gpus):
        raise TrainError(f"--gpus {text!r}: each GPU once (one solver per GPU)")
    return gpus


def shard_batch_fn(batch_fn: BatchFn | None, rank: int, count: int) -> BatchFn | None:
    """Rank ``rank``'s batches: batch ``iteration x count + rank`` of the sequence, so the
    ranks read distinct batches and a resumed run reads what it would have."""
    if batch_fn is None or count == 1:
        return batch_fn
    return lambda iteration: batch_fn(iteration * count + rank)


def visible_gpus() -> int | None:
    """The GPUs ``nvidia-smi -L`` lists; None where it is missing or fails (no driver).

    Asked of nvidia-smi, not of CUDA: the launcher forks the solvers' processes, and a
    CUDA context made before a fork is unusable in the children.
    """
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    proc = subprocess.run([smi, "-L"], capture_output=True, text=True)
    if proc.returncode:
        return None
    return sum(1 for line in proc.stdout.splitlines() if line.startswith("GPU "))


def check_multi_gpu(caffe: Any, gpus: tuple[int, ...], count: int | None) -> None:
    """Refuse, naming why, what Caffe would abort on: no CUDA, no NCCL, no such GPU."""
    where = Path(caffe.__file__).resolve().parents[2]
    if not caffe_has_cuda():
        raise TrainError(
            f"--gpus: this Caffe ({where}) is a CPU_ONLY build; build it with CUDA and NCCL "
            "(tools/build_caffe.sh --cuda, or USE_NCCL := 1 in your Makefile.config)"
        )
    if not getattr(caffe, "has_nccl", lambda: False)():
        raise TrainError(
            f"--gpus: this Caffe ({where}) was built without NCCL; set USE_NCCL := 1 in its "
            "Makefile.config and rebuild (tools/build_caffe.sh --cuda does)"
        )
    if count is None:
        raise TrainError("--gpus: no NVIDIA GPU here (nvidia-smi is missing or finds no driver)")
    missing = [g for g in gpus if g >= count]
    if missing:
        raise TrainError(
            f"--gpus: GPU {', '.join(map(str, missing))} not found: this machine has {count} "
            f"(ids 0..{count - 1})"
        )


def new_uid(caffe: Any) -> bytes:
    """A fresh NCCL session id, checked whole (a truncated id would make ranks hang)."""
    uid = caffe.NCCL.new_uid()
    if len(uid) != NCCL_UID_BYTES:
        raise TrainError(
            f"pycaffe's NCCL.new_uid() returned {len(uid)} of {NCCL_UID_BYTES} bytes: this "
            "Caffe's python/caffe/_caffe.cpp cuts the id at a NUL byte (PyBytes_FromString); "
            "use PyBytes_FromStringAndSize(uid.data(), uid.size()) there (the CUDA tree of "
            "tools/build_caffe.sh has it) and rebuild pycaffe"
        )
    return uid


def join_nccl(caffe: Any, solver: Any, uid: bytes) -> Any:
    """Join the session, take rank 0's weights, all-reduce the gradients at each step."""
    nccl = caffe.NCCL(solver, uid)
    nccl.bcast()
    solver.add_callback(nccl)
    if solver.param.layer_wise_reduce:
        solver.net.after_backward(nccl)
    return nccl


def _solve(solver: Any, out_dir: Any, settings: Any, queue: Any) -> None:
    """One rank's process: train, and report how it ended to the launcher."""
    from pyirg.train.driver import train

    rank = settings.solver_rank
    try:
        result = train(solver, out_dir, settings)
        queue.put(("done", rank, result if rank == 0 else None))
    except TrainingInterrupted as e:
        queue.put(("interrupted", rank, (e.result, e.signum) if rank == 0 else None))
    except BaseException as e:  # reported to the launcher, which stops the others
        queue.put(("failed", rank, f"{type(e).__name__}: {e}"))
        raise SystemExit(1) from None


def train_on_gpus(solver: Any, out_dir: Any, settings: Any) -> TrainResult:
    """``settings.gpus`` solvers, one process each (forked, as Caffe's train.py does)."""
    gpus = parse_gpus(settings.gpus)
    if settings.gpu is not None:
        raise TrainError("--gpu and --gpus exclude each other (--gpus 3 trains on GPU 3 alone)")
    caffe = import_caffe()
    check_multi_gpu(caffe, gpus, visible_gpus())
    uid = new_uid(caffe)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    procs = []
    for rank, gpu in enumerate(gpus):
        mine = dataclasses.replace(
            settings,
            gpus=None,
            gpu=gpu,
            solver_rank=rank,
            solver_count=len(gpus),
            nccl_uid=uid,
            batch_fn=shard_batch_fn(settings.batch_fn, rank, len(gpus)),
            progress=settings.progress and rank == 0,
        )
        proc = context.Process(target=_solve, args=(solver, out_dir, mine, queue))
        proc.start()
        procs.append(proc)
    outcome: tuple[str, Any] | None = None
    pending = set(range(len(procs)))
    try:
        while pending:
            try:
                kind, rank, value = queue.get(timeout=1.0)
            except Empty:  # a rank that Caffe aborted reports nothing: look at the exits
                dead = [r for r in sorted(pending) if procs[r].exitcode not in (None, 0)]
                if dead:
                    r = dead[0]
                    raise TrainError(
                        f"--gpus: rank {r} (GPU {gpus[r]}) exited with status "
                        f"{procs[r].exitcode} (Caffe's log above says why)"
                    ) from None
                continue
            pending.discard(rank)
            if kind == "failed":
                raise TrainError(f"--gpus: rank {rank} (GPU {gpus[rank]}) failed: {value}")
            if rank == 0:
                outcome = (kind, value)
    finally:
        for proc in procs:
            if proc.is_alive() and pending:
                proc.terminate()
            proc.join()
    assert outcome is not None
    kind, value = outcome
    if kind == "interrupted":
        raise TrainingInterrupted(*value)
    return value
