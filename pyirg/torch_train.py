"""Distillation training in PyTorch, on one process or many (``pyirg torch-train``, DDP).

Why: past one machine, PyTorch's ``torch.distributed`` is the engine people have. This
trains the same students as the Caffe nets (the reference ResNets of
:mod:`pyirg.torch.resnet`, Caffe's layer names), with the same terms and weights
(:class:`pyirg.torch.losses.IRGLoss` of the method), from the same data (the LMDBs that
``pyirg prepare-data`` writes, or the embedded digits) and a teacher read from a Caffe
``.caffemodel``; the trained student is written back as a ``.caffemodel`` (with a deploy
prototxt) that Caffe loads and ``pyirg export-onnx`` exports.

Launch with torchrun, one process per GPU (or per CPU share, backend gloo)::

    torchrun --nproc_per_node=2 -m pyirg torch-train --out runs/t --teacher-weights T.caffemodel

Data: every iteration draws one global batch of ranks x ``--batch`` instances (the
seeded, resumable order of :func:`pyirg.data.feed.array_batch_fn`), and rank r takes
rows r*B..(r+1)*B, so the ranks read distinct records and a run is the same whatever
the process count. ``--graph local`` builds each rank's IRG graph over its own B
instances (as Caffe's multi-GPU training); ``--graph global`` over all of them, which
gives exactly the loss and gradients of one process with the global batch
(:mod:`pyirg.torch.distributed`). BatchNorm statistics are each rank's own.

The run folder: ``run.json`` (settings, ranks), ``metrics.csv``/``metrics.json``
(rank 0: every term, learning rate, test accuracy), ``checkpoint_<iter>.pt`` (model,
optimizer, iteration; written atomically, so a resume never reads a partial one),
``student.caffemodel`` and ``student_deploy.prototxt`` at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from pyirg.arch import cifar_resnet
from pyirg.data.core import DATASETS as GEOMETRY
from pyirg.data.core import DataSplit
from pyirg.data.feed import FedSplit
from pyirg.data.fsutil import atomic_output, atomic_write_text
from pyirg.options import count_problem, from_args, numbers_problem, option, parser_for
from pyirg.torch.distributed import GATHER_SECONDS
from pyirg.torch.losses import GRAPHS, IRGLoss
from pyirg.torch.losses import METHODS as IRG_METHODS
from pyirg.torch.resnet import CifarResNet
from pyirg.train import chance_level
from pyirg.train.loop import stop_on_signals

METHODS = ("baseline", *IRG_METHODS)
DATASETS = ("digits", "cifar10", "cifar100")
NETWORKS, DATA, SOLVER = "networks", "data", "solver"
#: Settings a resume may change: the length of the run and how often it reports.
RESUMABLE = ("stop_at", "test_interval", "snapshot", "resume", "progress")


@dataclass(frozen=True)
class TorchTrainSettings:
    """Everything that decides a run; ``run.json`` records it."""

    out: str = option("", "run folder (required)")
    method: str = option("IRG", "the student's loss", choices=METHODS)
    teacher_weights: str | None = option(
        None, "the teacher's .caffemodel (required unless --method baseline)"
    )
    graph: str = option("local", "IRG graph over each rank's batch, or all ranks'", choices=GRAPHS)
    teacher_depth: int = option(20, "teacher ResNet depth (6n+2)", NETWORKS)
    teacher_width: float = option(1.0, "teacher width multiplier", NETWORKS)
    student_depth: int = option(20, "student ResNet depth (6n+2)", NETWORKS)
    student_width: float = option(0.5, "student width multiplier", NETWORKS)
    dataset: str = option("digits", "data set", DATA, choices=DATASETS)
    data_dir: str | None = option(
        None, "folder written by pyirg prepare-data (train_lmdb, test_lmdb); digits: the "
        "embedded copy when not given", DATA,
    )  # fmt: skip
    batch: int = option(32, "instances per rank and iteration", DATA)
    iters: int = option(200, "training iterations (the schedule's length)", SOLVER)
    stop_at: int | None = option(
        None, "stop (with a checkpoint) after this iteration; --resume continues", SOLVER
    )
    base_lr: float = option(0.1, "learning rate (x0.1 at 50%% and 75%% of --iters)", SOLVER)
    momentum: float = option(0.9, "SGD momentum", SOLVER)
    weight_decay: float = option(5e-4, "SGD weight decay", SOLVER)
    test_interval: int = option(100, "test every this many iterations (0: at the end)", SOLVER)
    snapshot: int = option(100, "checkpoint every this many iterations (0: at the end)", SOLVER)
    seed: int = option(0, "seed of the student's initial weights and the data order")
    resume: bool = option(False, "continue from the run folder's latest checkpoint")
    progress: bool = option(True, "progress bar on rank 0")

    def check(self) -> None:
        """Refuse settings that could only fail later (or silently train nothing)."""
        if not self.out:
            raise ValueError("--out is required: the run folder")
        if self.method != "baseline" and not self.teacher_weights:
            raise ValueError(f"--method {self.method} needs --teacher-weights (a .caffemodel)")
        if self.method == "baseline" and self.teacher_weights:
            raise ValueError("--teacher-weights: not used by --method baseline (no teacher)")
        if self.teacher_weights and not Path(self.teacher_weights).is_file():
            raise ValueError(f"--teacher-weights {self.teacher_weights}: no such file")
        problem = count_problem(self, {"batch": 1, "iters": 1})
        if problem:
            raise ValueError(problem)
        if self.stop_at is not None and not 1 <= self.stop_at <= self.iters:
            raise ValueError(f"--stop-at must lie in [1, --iters {self.iters}], got {self.stop_at}")
        if self.dataset != "digits" and not self.data_dir:
            raise ValueError(f"--dataset {self.dataset} needs --data-dir (pyirg prepare-data)")
        problem = numbers_problem(self, {"base_lr": True, "weight_decay": False})
        if problem:
            raise ValueError(problem)
        if not 0 <= self.momentum < 1:
            raise ValueError(f"--momentum must lie in [0, 1), got {self.momentum}")
        problem = count_problem(self, {"test_interval": 0, "snapshot": 0})
        if problem:
            raise ValueError(problem)


def _ranks() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment, (0, 1) without it."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _split(cfg: TorchTrainSettings, classes: int) -> DataSplit:
    """The DataSplit: the embedded digits, or the LMDBs of a prepare-data folder."""
    if cfg.data_dir is None:
        from pyirg.data.digits import load_digits_split

        return load_digits_split()
    from pyirg.data.writer import read_datum_lmdb

    root = Path(cfg.data_dir)
    for sub in ("train_lmdb", "test_lmdb"):
        if not (root / sub).is_dir():
            raise ValueError(f"--data-dir {root}: no {sub}/ (write it with pyirg prepare-data)")
    train_x, train_y = read_datum_lmdb(root / "train_lmdb")
    test_x, test_y = read_datum_lmdb(root / "test_lmdb")
    return DataSplit(cfg.dataset, train_x, train_y, test_x, test_y,
                     tuple(str(c) for c in range(classes)))  # fmt: skip


def _specs(cfg: TorchTrainSettings, channels: int, classes: int) -> tuple[Any, Any]:
    """The teacher's and the student's ResNet, numbered as the Caffe nets are."""
    teacher = cifar_resnet(cfg.teacher_depth, cfg.teacher_width, classes, channels)
    numbering = cfg.teacher_depth if cfg.teacher_depth > cfg.student_depth else None
    student = cifar_resnet(cfg.student_depth, cfg.student_width, classes, channels, numbering)
    return teacher, student


def learning_rate(cfg: TorchTrainSettings, iteration: int) -> float:
    """The step schedule of the CIFAR recipes: x0.1 at 50% and at 75% of the run."""
    steps = sum(iteration >= int(cfg.iters * f) for f in (0.5, 0.75))
    return cfg.base_lr * 0.1**steps


class _Run:
    """One rank's part of a run: models, optimizer, data, files."""

    def __init__(self, cfg: TorchTrainSettings) -> None:
        from pyirg.torch.caffemodel import load_caffe_weights

        self.cfg = cfg
        self.rank, self.world = _ranks()
        self.cuda = torch.cuda.is_available()
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.cuda else "gloo")
        self.device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
                                   if self.cuda else "cpu")  # fmt: skip
        self.out = Path(cfg.out)
        geometry = GEOMETRY[cfg.dataset]
        split = _split(cfg, geometry.num_classes)
        self.fed = FedSplit.of(split, geometry.pad, geometry.scale, geometry.mirror)
        self.train_fn, _ = self.fed.batch_fns(cfg.batch * self.world, cfg.seed, "x", "y")
        self.t_spec, self.s_spec = _specs(cfg, geometry.channels, split.num_classes)
        torch.manual_seed(cfg.seed)  # the same initial student on every rank
        self.student = CifarResNet(self.s_spec).to(self.device)
        self.teacher = None
        if cfg.method != "baseline":
            self.teacher = CifarResNet(self.t_spec)
            load_caffe_weights(self.teacher, cfg.teacher_weights)
            self.teacher.to(self.device).eval().requires_grad_(False)
            self.loss = IRGLoss.from_networks(
                cfg.method, self.teacher.layout, self.student.layout, graph=cfg.graph
            )
        else:
            self.loss = IRGLoss(gt_weight=1.0)
        self.model = self.student
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.cuda else None
            self.model = DistributedDataParallel(self.student, device_ids=ids)
        self.optimizer = torch.optim.SGD(
            self.student.parameters(), lr=cfg.base_lr, momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
        )  # fmt: skip
        self.start = 0

    # ---------------------------------------------------------------- files

    def restore(self) -> None:
        found = sorted(self.out.glob("checkpoint_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
        if not found:
            raise ValueError(f"--resume: {self.out} holds no checkpoint_*.pt")
        state = torch.load(found[-1], map_location=self.device, weights_only=True)
        self.student.load_state_dict(state["student"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.start = int(state["iteration"])
        if self.rank == 0:
            print(f"torch-train: resumed from {found[-1].name} (iteration {self.start})")

    def agreed_stop(self, signum: int | None) -> int:
        """The signal that stops the run after this iteration (0: none), the same on every
        rank: one rank's SIGTERM stops all of them at the same iteration, with one
        checkpoint, instead of leaving the others waiting in a collective."""
        if self.world == 1:
            return signum or 0
        flag = torch.tensor([signum or 0], dtype=torch.int64, device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())

    def save_checkpoint(self, iteration: int) -> None:
        if self.rank:
            return
        state = {
            "student": self.student.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "iteration": iteration,
        }
        with atomic_output(self.out / f"checkpoint_{iteration}.pt") as tmp:
            torch.save(state, tmp)

    def save_student(self) -> None:
        """The student as Caffe reads it: caffemodel + deploy prototxt (no prefix)."""
        from pyirg.caffeio import write_text
        from pyirg.netspec import deploy_net
        from pyirg.torch.caffemodel import save_caffemodel

        if self.rank:
            return
        channels, height, width = self.fed.train_images.shape[1:]
        deploy = deploy_net(self.s_spec, batch=1, channels=channels, height=height, width=width)
        write_text(self.out / "student_deploy.prototxt", deploy)
        save_caffemodel(self.student, self.out / "student.caffemodel", name=deploy.name)

    # ---------------------------------------------------------------- steps

    def step(self, iteration: int) -> dict[str, float]:
        """One iteration on this rank's rows of the global batch; terms averaged over ranks."""
        cfg = self.cfg
        start, gathered = time.perf_counter(), GATHER_SECONDS[0]
        batch = self.train_fn(iteration)
        rows = slice(self.rank * cfg.batch, (self.rank + 1) * cfg.batch)
        x = torch.from_numpy(batch["x"][rows]).to(self.device)
        y = torch.from_numpy(batch["y"][rows]).long().to(self.device)
        lr = learning_rate(cfg, iteration)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        _, s_feats = self.model(x, return_features=True)
        t_feats: dict[str, Any] = {}
        if self.teacher is not None:
            with torch.no_grad():
                _, t_feats = self.teacher(x, return_features=True)
        terms = self.loss(s_feats, t_feats, y)
        self.optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        self.optimizer.step()
        values = torch.stack([v.detach() for v in terms.values()])
        if not torch.isfinite(values).all():
            raise ValueError(
                f"torch-train: non-finite loss at iteration {iteration} (lr {lr:g}): "
                + ", ".join(f"{k} {float(v):g}" for k, v in zip(terms, values))
            )
        if self.world > 1:
            dist.all_reduce(values)
            values /= self.world
        out = {k: float(v) for k, v in zip(terms, values)}
        out["lr"] = lr
        # This rank's wall time of the step and of the graph's gathers in it (rank 0's
        # are recorded: the ranks wait for each other in every collective).
        out["iter_ms"] = (time.perf_counter() - start) * 1e3
        out["gather_ms"] = (GATHER_SECONDS[0] - gathered) * 1e3
        return out

    def test_accuracy(self) -> float:
        """Top-1 accuracy of the student (global statistics) on the whole test split; each
        rank tests its share, the counts are summed."""
        images = self.fed.test_array()
        labels = self.fed.test_labels
        chunk = 256
        self.student.eval()
        correct = torch.zeros(2, dtype=torch.float64, device=self.device)
        with torch.no_grad():
            for start in range(self.rank * chunk, len(images), chunk * self.world):
                x = torch.from_numpy(images[start : start + chunk]).to(self.device)
                pred = self.student(x).argmax(1).cpu().numpy()
                correct[0] += float((pred == labels[start : start + chunk]).sum())
                correct[1] += len(pred)
        self.student.train()
        if self.world > 1:
            dist.all_reduce(correct)
        return float(correct[0] / correct[1])


class TrainingStopped(Exception):
    """SIGINT/SIGTERM stopped the run after ``iteration``, its checkpoint saved."""

    def __init__(self, iteration: int, signum: int) -> None:
        super().__init__(f"stopped by signal {signum} after iteration {iteration}")
        self.iteration, self.signum = iteration, signum


def _write_metrics(out: Path, rows: list[dict[str, Any]]) -> None:
    keys = sorted({k for r in rows for k in r}, key=lambda k: (k != "iter", k))
    lines = [",".join(keys)] + [",".join(str(r.get(k, "")) for k in keys) for r in rows]
    atomic_write_text(out / "metrics.csv", "\n".join(lines) + "\n")
    atomic_write_text(out / "metrics.json", json.dumps(rows, indent=1) + "\n")


def _check_folder(cfg: TorchTrainSettings, mine: dict[str, Any]) -> None:
    """A run folder belongs to one run: refuse another, or a resume with other settings
    (``mine``: this run's run.json)."""
    record = Path(cfg.out) / "run.json"
    if not record.is_file():
        if cfg.resume:
            raise ValueError(f"--resume: {cfg.out} holds no run (no run.json)")
        return
    old = json.loads(record.read_text())
    if not cfg.resume:
        raise ValueError(f"{cfg.out} already holds a run (run.json): --resume, or another --out")
    changed = [
        f"{k} {old['settings'].get(k)!r} -> {v!r}"
        for k, v in mine["settings"].items()
        if k not in RESUMABLE and old["settings"].get(k) != v
    ]
    if old.get("ranks") != mine["ranks"]:
        changed.append(f"ranks {old.get('ranks')} -> {mine['ranks']}")
    if changed:
        raise ValueError(f"--resume with other settings than {record}: {'; '.join(changed)}")


def train(cfg: TorchTrainSettings) -> dict[str, Any]:
    """Run (or resume) training on this rank; the final metrics row on every rank."""
    cfg.check()
    rank, world = _ranks()
    out = Path(cfg.out)
    record = {"settings": asdict(cfg), "ranks": world}
    if rank == 0:
        _check_folder(cfg, record)
    run = _Run(cfg)  # before the folder is made: a bad teacher or data set leaves no --out
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    if cfg.resume:
        run.restore()
    rows: list[dict[str, Any]] = []
    if rank == 0:
        atomic_write_text(out / "run.json", json.dumps(record, indent=1) + "\n")
        if cfg.resume and (out / "metrics.json").is_file():
            rows = [r for r in json.loads((out / "metrics.json").read_text())
                    if r["iter"] <= run.start]  # fmt: skip
    end = cfg.iters if cfg.stop_at is None else cfg.stop_at
    bar = tqdm(total=end, initial=run.start, desc="torch-train", unit="it",
               disable=rank != 0 or not cfg.progress)  # fmt: skip
    row: dict[str, Any] = {}
    with stop_on_signals() as stop:
        for iteration in range(run.start, end):
            row = {"iter": iteration + 1, **run.step(iteration)}
            done = iteration + 1
            if done == end or (cfg.test_interval and done % cfg.test_interval == 0):
                row["test_accuracy"] = run.test_accuracy()
            signum = run.agreed_stop(stop.signum)
            if done == end or (cfg.snapshot and done % cfg.snapshot == 0) or signum:
                run.save_checkpoint(done)
            rows.append(row)
            bar.set_postfix(loss=f"{row['total']:.4f}")
            bar.update(1)
            if rank == 0 and ("test_accuracy" in row or signum):
                _write_metrics(out, rows)
            if signum and done < end:
                bar.close()
                raise TrainingStopped(done, signum)
    bar.close()
    if not row and rows:  # a resume of a finished run: its last recorded row
        row = rows[-1]
    run.save_student()
    if rank == 0:
        _write_metrics(out, rows)
        print(f"torch-train: {end} of {cfg.iters} iterations on {world} rank(s); test accuracy "
              f"{row.get('test_accuracy', float('nan')):.4f}; student: "
              f"{out / 'student.caffemodel'}")  # fmt: skip
        note = (
            end == cfg.iters
            and "test_accuracy" in row
            and chance_level(row["test_accuracy"], run.fed.test_labels, run.s_spec.num_classes)
        )
        if note:  # not after a deliberate --stop-at: its schedule has not ended
            print(f"torch-train: warning: {note}; try more --iters, another --base-lr or "
                  "--method", file=sys.stderr)  # fmt: skip
    return row


def build_parser() -> argparse.ArgumentParser:
    return parser_for(
        TorchTrainSettings,
        "pyirg torch-train",
        __doc__.splitlines()[0]
        + " Launch with torchrun --nproc_per_node=K -m pyirg torch-train ...",
    )


def main(argv: list[str] | None = None) -> int:
    """``pyirg torch-train``: train, checkpoint, write the student as a caffemodel."""
    from pyirg.cli import one_line_error

    args = build_parser().parse_args(argv)
    try:
        train(from_args(TorchTrainSettings, args))
    except ValueError as e:
        return one_line_error("torch-train", e)
    except TrainingStopped as e:
        if _ranks()[0] == 0:
            print(f"torch-train: {signal.Signals(e.signum).name} at iteration {e.iteration}: "
                  f"saved checkpoint_{e.iteration}.pt; continue with --resume",
                  file=sys.stderr)  # fmt: skip
        return 128 + e.signum
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
