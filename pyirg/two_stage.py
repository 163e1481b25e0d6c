"""``pyirg refilled``: REFILLED's two training stages through pycaffe, end to end.

1. **Stage 1** trains the student's embedding alone with ``TripletRelationLoss`` against
   the frozen teacher (Nesterov SGD; the authors decay the rate by a cosine from ``lr1``
   to ``0.1 lr1``, which Caffe has no policy for: :func:`pyirg.solver.cosine_schedule`
   runs the closest multistep), then judges it by nearest-class-mean accuracy.
2. **Centers**: the teacher's class centers over the training images of the student's
   classes, written with the teacher's weights into ``OUT/teacher_centers.caffemodel``.
3. **Stage 2** starts the student from the stage-1 weights (by name) and trains
   cross-entropy + ``LocalCenterKDLoss`` (multistep at 50/70/90% with gamma 0.2, as the
   authors' 100/140/180 of 200 epochs).

Both stages are ordinary :func:`pyirg.train.driver.train` runs (``OUT/stage1``,
``OUT/stage2``): progress, atomic snapshots and metrics as for IRG; the same command run
again resumes each stage from its last complete snapshot (a finished stage is kept). The data is a
prepared folder with .npy arrays (``pyirg prepare-data digits DIR``, or ``cifar10 ...
--npy``), fed from Python through Input layers; ``--classes`` keeps some classes only,
relabelled 0..k-1, for a cross-task run whose teacher learned other classes.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pyirg.cli import one_line_error
from pyirg.data.core import DATASETS, DataError, Dataset, DataSplit
from pyirg.data.feed import FedSplit
from pyirg.data.fsutil import atomic_write_text
from pyirg.options import (
    config_record,
    count_problem,
    from_args,
    numbers_problem,
    option,
    parser_for,
)
from pyirg.train import chance_level

RESULTS = "refilled.json"


def parse_network(text: str, num_classes: int, in_channels: int) -> Any:
    """``resnet-20``, ``resnet-14-0.5``, ``wrn-16-2``, ``mobilenet-0.5`` -> a description."""
    from pyirg.arch import cifar_resnet
    from pyirg.backbones import MobileNetSpec, WideResNetSpec

    kind, *args = text.lower().split("-")
    try:
        if kind == "resnet" and len(args) in (1, 2):
            width = float(args[1]) if len(args) == 2 else 1.0
            return cifar_resnet(int(args[0]), width, num_classes, in_channels)
        if kind == "wrn" and len(args) == 2:
            return WideResNetSpec(int(args[0]), int(args[1]), num_classes, in_channels)
        if kind == "mobilenet" and len(args) == 1:
            return MobileNetSpec(float(args[0]), num_classes, in_channels)
    except ValueError as e:
        raise ValueError(f"network {text!r}: {e}") from e
    raise ValueError(
        f"network {text!r}: expected resnet-DEPTH[-WIDTH], wrn-DEPTH-WIDEN or mobilenet-WIDTH"
    )


@dataclass(frozen=True)
class TwoStageSettings:
    """Everything ``pyirg refilled`` takes; its flags are made from these fields."""

    data_dir: Path = option(Path("data/digits"), "prepared data folder with .npy arrays")
    dataset: str = option("digits", "which data set the folder holds", choices=tuple(DATASETS))
    classes: tuple[int, ...] = option((), "keep these classes only (relabelled 0..k-1)")
    teacher: str = option("resnet-20", "teacher network (resnet-D[-W], wrn-D-K, mobilenet-W)")
    teacher_weights: Path = option(Path("teacher.caffemodel"), "the trained teacher")
    student: str = option("resnet-14-0.25", "student network")
    out: Path = option(Path("out/refilled"), "output folder")
    mode: str = option(
        "TRIPLET", "stage-1 relation (TUPLE: the improved variant)", choices=("TRIPLET", "TUPLE")
    )
    margin: float = option(0.2, "semi-hard mining margin")
    tau1: float = option(4.0, "stage-1 temperature")
    scale: float = option(1000.0, "stage-1 loss scale")
    centers: str = option("GLOBAL", "stage-2 centers", choices=("GLOBAL", "LOCAL"))
    tau2: float = option(2.0, "stage-2 temperature")
    teaching_weight: float = option(100.0, "stage-2 weight of the KD term (lambda)")
    batch: int = option(64, "batch size")
    stage1_iter: int = option(300, "stage-1 iterations")
    stage2_iter: int = option(300, "stage-2 iterations")
    lr1: float = option(0.1, "stage-1 base rate (cosine to 0.1 lr1)")
    lr2: float = option(0.1, "stage-2 base rate (x0.2 at 50, 70, 90%%)")
    weight_decay: float = option(5e-4, "weight decay")
    seed: int = option(0, "seed of both stages (weights, batches)")
    progress: bool = option(True, "progress bars")
    gpu: int | None = option(None, "GPU id for both stages (default: CPU)")
    alone: bool = option(
        False,
        "train --student alone with cross-entropy (stage 2's schedule, no teacher): a "
        "baseline, or a teacher for a later run",
    )

    def check(self) -> None:
        """Refuse, by option name, the numbers the stages' nets and schedules cannot take
        (stage 1's cosine needs two iterations); the loss settings RefilledConfig checks."""
        problem = count_problem(
            self, {"batch": 1, "stage1_iter": 2, "stage2_iter": 1}
        ) or numbers_problem(self, {"lr1": True, "lr2": True, "weight_decay": False})
        if problem:
            raise ValueError(problem)


def fed_split(split: DataSplit, base: Dataset) -> tuple[FedSplit, Dataset]:
    """``split`` as Input-fed nets see it (``base``'s padding, scale and mirroring), and
    the Dataset that describes it: its own classes and sizes."""
    fed = FedSplit.of(split, base.pad, base.scale, base.mirror)
    dataset = replace(
        base,
        num_classes=split.num_classes,
        train_size=len(split.train_labels),
        test_size=len(split.test_labels),
    )
    return fed, dataset


def refilled_config(s: TwoStageSettings, dataset: Dataset) -> Any:
    """The teacher -> student pair and both stages' loss settings of ``s``."""
    from pyirg.netspec import DataConfig
    from pyirg.refilled import RefilledConfig

    k, c = dataset.num_classes, dataset.channels
    return RefilledConfig(
        teacher=parse_network(s.teacher, k, c),  # its classifier is not in the nets
        student=parse_network(s.student, k, c),
        data=DataConfig(kind="input", dataset=dataset, train_batch=s.batch, test_batch=s.batch),
        mode=s.mode,
        margin=s.margin,
        tau1=s.tau1,
        scale=s.scale,
        centers=s.centers,
        tau2=s.tau2,
        teaching_weight=s.teaching_weight,
    )


def run_stages(
    cfg: Any,
    fed: FedSplit,
    s: TwoStageSettings,
    out: Path,
    init_weights: Path | None = None,
) -> dict[str, Any]:
    """Stage 1, the NCM accuracy, the centers, stage 2, into ``out``; ``init_weights``: the
    student's start (else its fillers), so that runs of several methods can be paired."""
    from pyirg.refilled import (
        class_centers,
        embeddings,
        ncm_accuracy,
        stage1_net,
        stage2_net,
        write_centers,
    )
    from pyirg.solver import cosine_schedule, make_solver

    prefix = cfg.student_prefix
    levels = min(16, max(1, s.stage1_iter // 4))  # steps at least 4 iterations apart
    stage1 = cosine_schedule(s.lr1, s.stage1_iter, levels=levels, **_nesterov(s))
    one = _train(
        make_solver(stage1_net(cfg), stage1, "net"), out / "stage1", fed, s, tested=False,
        teacher_weights=s.teacher_weights, init_weights=init_weights, test_interval=0,
    )  # fmt: skip
    train_images = fed.as_fed(fed.train_images)
    student_train = embeddings(cfg.student, one.weights, train_images, prefix)
    student_test = embeddings(cfg.student, one.weights, fed.test_array(), prefix)
    ncm = ncm_accuracy(student_train, fed.train_labels, student_test, fed.test_labels)
    teacher = embeddings(cfg.teacher, s.teacher_weights, train_images)  # of the student's classes
    centers = class_centers(teacher, fed.train_labels, cfg.data.dataset.num_classes)
    with_centers = write_centers(s.teacher_weights, centers, out / "teacher_centers.caffemodel")
    second = stage2_solver(stage2_net(cfg), cfg, s)
    two = _train(
        second, out / "stage2", fed, s, teacher_weights=with_centers, init_weights=one.weights
    )
    return {
        "stage1_ncm_accuracy": ncm,
        "stage1_weights": str(one.weights),
        "student_accuracy": two.accuracy,
        "stage2_weights": str(two.weights),
    }


def _train(
    solver: Any, out: Path, fed: FedSplit, s: TwoStageSettings, tested: bool = True, **settings
) -> Any:
    """A stage (or the student alone) on ``fed``'s batches, resumed where ``out`` holds
    one, so that the same command run again continues."""
    from pyirg.train.driver import train
    from pyirg.train.folder import is_run_folder

    train_fn, test_fn = fed.batch_fns(s.batch, s.seed)
    return train(
        solver, out, seed=s.seed, batch_fn=train_fn, test_batch_fn=test_fn if tested else None,
        progress=s.progress, resume=is_run_folder(out), gpu=s.gpu, **settings,
    )  # fmt: skip


def _nesterov(s: TwoStageSettings) -> dict[str, Any]:
    return {"momentum": 0.9, "weight_decay": s.weight_decay, "type": "Nesterov"}


def stage2_solver(net: Any, cfg: Any, s: TwoStageSettings) -> Any:
    """Multistep at 50, 70 and 90% with gamma 0.2 (the authors' 100/140/180 of 200
    epochs); one test of the whole split, at the end."""
    from pyirg.solver import Schedule, make_solver

    n = s.stage2_iter
    steps = tuple(sorted({max(1, round(n * f)) for f in (0.5, 0.7, 0.9)} - {n}))
    schedule = Schedule(base_lr=s.lr2, gamma=0.2, stepvalues=steps, max_iter=n, **_nesterov(s))
    return make_solver(net, schedule, "net", cfg.data.test_iter, test_interval=n)


def train_alone(cfg: Any, fed: FedSplit, s: TwoStageSettings, out: Path) -> dict[str, Any]:
    """The student network alone (cross-entropy, stage 2's schedule) into ``out``."""
    from pyirg.netspec import batchnorm_memory
    from pyirg.refilled import label, plain_net

    net = batchnorm_memory(plain_net(cfg.student, cfg.data), cfg.bn_fraction)
    result = _train(stage2_solver(net, cfg, s), out, fed, s)
    return {
        "network": label(cfg.student),
        "accuracy": result.accuracy,
        "weights": str(result.weights),
    }


def run(s: TwoStageSettings) -> dict[str, Any]:
    """Both stages on the prepared data of ``s``; the record in ``OUT/refilled.json``."""
    from pyirg.data.writer import read_npy_split
    from pyirg.refilled import describe

    s.check()
    if len(s.classes) == 1:
        raise ValueError(
            f"--classes {s.classes[0]}: a single class leaves nothing to tell apart (nor "
            "relations to distill); give two or more"
        )
    split = read_npy_split(s.data_dir)
    fed, dataset = fed_split(split.subset(s.classes) if s.classes else split, DATASETS[s.dataset])
    cfg = refilled_config(s, dataset)
    settings = config_record(s)
    if s.alone:
        result = {"settings": settings, **train_alone(cfg, fed, s, s.out)}
    else:
        result = {
            "settings": settings,
            "pair": dict(describe(cfg)),
            **run_stages(cfg, fed, s, s.out),
        }
    warnings = chance_warnings(result, fed.test_labels, dataset.num_classes)
    if warnings:
        result["warnings"] = warnings
    atomic_write_text(s.out / RESULTS, json.dumps(result, indent=2) + "\n")
    return result


def chance_warnings(result: dict[str, Any], labels: Sequence[int], classes: int) -> list[str]:
    """What ``result`` would hide behind a bare number: a stage that ended at chance.

    Why: stage 2's KD term, weighted too high for the run's learning rate, can explode
    without becoming non-finite (the authors' lambda of 100 at lr 0.1 on the digits), and
    the student then ends predicting one class; each line says what to change.
    """
    checks = (
        ("accuracy", "alone", "more --stage2-iter or another --lr2"),
        (
            "stage1_ncm_accuracy",
            "stage 1 (nearest class mean)",
            "more --stage1-iter, another --lr1 or --scale",
        ),
        ("student_accuracy", "stage 2", "a lower --teaching-weight or --lr2"),
    )
    found = []
    for key, what, remedy in checks:
        accuracy = result.get(key)
        note = None if accuracy is None else chance_level(accuracy, labels, classes)
        if note:
            found.append(f"{what}: {note}; try {remedy}")
    return found


def build_parser() -> argparse.ArgumentParser:
    return parser_for(
        TwoStageSettings,
        "refilled",
        "REFILLED distillation in two stages (relation, then local-center KD).",
    )


def main(argv: list[str] | None = None) -> int:
    """``pyirg refilled``: run both stages; one-line errors with exit status 2."""
    from pyirg.train import TrainError

    args = build_parser().parse_args(argv)
    try:
        result = run(from_args(TwoStageSettings, args))
    except (TrainError, DataError, ValueError) as e:
        return one_line_error("refilled", e)
    where = Path(args.out) / RESULTS
    for warning in result.get("warnings", ()):
        print(f"refilled: warning: {warning}", file=sys.stderr)
    if "stage1_ncm_accuracy" not in result:
        print(f"{result['network']} alone: accuracy {result['accuracy']:.4f} ({where})")
        return 0
    print(
        f"stage 1: nearest-class-mean accuracy {result['stage1_ncm_accuracy']:.4f}; "
        f"stage 2: student accuracy {result['student_accuracy']:.4f} ({where})"
    )
    return 0
