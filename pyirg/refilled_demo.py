"""``pyirg refilled-demo``: REFILLED on the embedded digits, cross-task and standard.

Two settings, each over the seeds with the main job's paired design (for a seed every
student starts from the same weights and sees the same batches; only the method
differs) and its statistics (paired difference to the baseline with a 95% Student-t
interval, wins/ties/losses):

- **cross-task**: the teacher learns digits 0-4 only (all their images of the default
  1000-image training split); the students learn digits 5-9 from 10 images per class.
  Logit-matching methods cannot be used (the teacher has no classes 5-9); REFILLED relates
  instances in the teacher's embedding. Baseline vs REFILLED, with REFILLED's stage-1
  nearest-class-mean accuracy.
- **standard**: the main job's setting (all ten digits, 10 training images per class, the
  same teacher for every student): baseline vs REFILLED vs IRG.

Networks are the main job's (teacher ResNet-20, student ResNet-14 x0.25); accuracies are
on the whole test split through each net's deploy net. The baseline trains as long as
REFILLED's stage 2; REFILLED's stage 1 comes on top (as in the paper's comparison).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyirg.cli import one_line_error
from pyirg.data.core import DATASETS, Dataset
from pyirg.data.feed import FedSplit
from pyirg.options import config_record, from_args, option, parser_for

SETTINGS = ("cross-task", "standard")
METHODS = {"cross-task": ("baseline", "REFILLED"), "standard": ("baseline", "REFILLED", "IRG")}
CROSS_TEACHER, CROSS_STUDENT = (0, 1, 2, 3, 4), (5, 6, 7, 8, 9)


@dataclass(frozen=True)
class DemoConfig:
    """What the demo runs; its flags are made from these fields."""

    out: Path = option(Path("out/refilled-demo"), "output folder")
    seeds: tuple[int, ...] = option(tuple(range(10)), "seeds (paired across methods)")
    settings: tuple[str, ...] = option(SETTINGS, "which settings", choices=SETTINGS)
    train_per_class: int = option(10, "the students' training images per class")
    teacher_iter: int = option(300, "teacher iterations")
    stage1_iter: int = option(150, "REFILLED stage-1 iterations")
    max_iter: int = option(300, "baseline, IRG and REFILLED stage-2 iterations")
    mode: str = option("TRIPLET", "REFILLED stage-1 relation", choices=("TRIPLET", "TUPLE"))
    teaching_weight: float = option(
        10.0, "REFILLED stage-2 weight of the KD term (the authors' 100 diverges here at lr 0.1)"
    )
    tau2: float = option(2.0, "REFILLED stage-2 temperature")
    batch: int = option(64, "batch size")
    jobs: int = option(0, "trainings in parallel, one BLAS thread each (0: one per core)")
    progress: bool = option(True, "a line per finished training")


@dataclass(frozen=True)
class Setting:
    """One setting's data: the teacher's and the students' fed splits and data sets."""

    name: str
    teacher_data: FedSplit
    teacher_set: Dataset
    student_data: FedSplit
    student_set: Dataset


def load_setting(name: str, train_per_class: int) -> Setting:
    """The setting's data: the cross-task teacher's is the default split's digits 0-4."""
    from pyirg.data.digits import load_digits_split
    from pyirg.two_stage import fed_split

    digits = DATASETS["digits"]
    students = load_digits_split(train_per_class=train_per_class)
    if name == "standard":
        fed, dataset = fed_split(students, digits)
        return Setting(name, fed, dataset, fed, dataset)
    teacher_data, teacher_set = fed_split(load_digits_split().subset(CROSS_TEACHER), digits)
    student_data, student_set = fed_split(students.subset(CROSS_STUDENT), digits)
    return Setting(name, teacher_data, teacher_set, student_data, student_set)


def _specs(setting: Setting) -> tuple[Any, Any]:
    from pyirg.arch import cifar_resnet

    teacher = cifar_resnet(20, 1.0, setting.teacher_set.num_classes, 1)
    return teacher, cifar_resnet(14, 0.25, setting.student_set.num_classes, 1)


def _plain_net(spec: Any, dataset: Dataset, cfg: DemoConfig, prefix: str) -> Any:
    from pyirg.experiment import BN_FRACTION, input_data
    from pyirg.netspec import batchnorm_memory, train_net

    net = train_net(spec, input_data(dataset, cfg.batch), "digits", prefix)
    return batchnorm_memory(net, BN_FRACTION)


def train_teacher(setting: Setting, cfg: DemoConfig) -> Path:
    """The setting's teacher, trained once (seed 0), on the teacher's data."""
    from pyirg.experiment import digits_solver
    from pyirg.train.driver import train
    from pyirg.train.folder import is_run_folder

    teacher, _ = _specs(setting)
    out = cfg.out / setting.name / "teacher"
    net = _plain_net(teacher, setting.teacher_set, cfg, "")
    solver = digits_solver(net, cfg.teacher_iter, setting.teacher_set.test_size, cfg.batch, 0)
    train_fn, test_fn = setting.teacher_data.batch_fns(cfg.batch, 0)
    result = train(
        solver, out, seed=0, batch_fn=train_fn, test_batch_fn=test_fn,
        resume=is_run_folder(out), progress=False,
    )  # fmt: skip
    return result.weights


def init_weights(setting: Setting, cfg: DemoConfig, seed: int) -> Path:
    """The student's initial weights for ``seed``: its baseline net's fillers, drawn once."""
    from pyirg.caffeio import filler_weights
    from pyirg.distill import STUDENT_PREFIX
    from pyirg.experiment import init_weights_path

    _, student = _specs(setting)
    net = _plain_net(student, setting.student_set, cfg, STUDENT_PREFIX)
    return filler_weights(net, seed, init_weights_path(cfg.out / setting.name, seed))


def train_student(
    setting_name: str, method: str, seed: int, cfg: DemoConfig, teacher: Path
) -> dict[str, Any]:
    """One student (the demo's unit of parallel work), with one BLAS thread."""
    import caffe
    from threadpoolctl import threadpool_limits

    from pyirg.distill import STUDENT_PREFIX
    from pyirg.experiment import ExperimentConfig, digits_solver, evaluate, input_data, student_net
    from pyirg.train.driver import train
    from pyirg.train.folder import is_run_folder
    from pyirg.two_stage import TwoStageSettings, run_stages

    caffe.set_mode_cpu()
    setting = load_setting(setting_name, cfg.train_per_class)
    teacher_spec, student = _specs(setting)
    fed, dataset = setting.student_data, setting.student_set
    out = cfg.out / setting_name / method / f"seed{seed}"
    start = init_weights(setting, cfg, seed)
    row: dict[str, Any] = {"setting": setting_name, "method": method, "seed": seed}
    data = input_data(dataset, cfg.batch)
    with threadpool_limits(limits=1):
        if method == "REFILLED":
            from pyirg.refilled import RefilledConfig

            pair = RefilledConfig(
                teacher_spec, student, data, mode=cfg.mode,
                teaching_weight=cfg.teaching_weight, tau2=cfg.tau2,
            )  # fmt: skip
            s = TwoStageSettings(
                teacher_weights=teacher, batch=cfg.batch, stage1_iter=cfg.stage1_iter,
                stage2_iter=cfg.max_iter, seed=seed, progress=False, mode=cfg.mode,
            )  # fmt: skip
            stages = run_stages(pair, fed, s, out, init_weights=start)
            weights = Path(stages["stage2_weights"])
            row["ncm_accuracy"] = stages["stage1_ncm_accuracy"]
        else:
            if method == "baseline":
                net, given = _plain_net(student, dataset, cfg, STUDENT_PREFIX), None
            else:  # IRG: the main job's net, terms and weights
                net = student_net(ExperimentConfig(), "IRG", teacher_spec, student, data)
                given = teacher
            solver = digits_solver(net, cfg.max_iter, dataset.test_size, cfg.batch, seed)
            train_fn, test_fn = fed.batch_fns(cfg.batch, seed)
            weights = train(
                solver, out, teacher_weights=given, init_weights=start, seed=seed,
                batch_fn=train_fn, test_batch_fn=test_fn, progress=False,
                resume=is_run_folder(out),
            ).weights  # fmt: skip
        row["accuracy"] = evaluate(student, weights, STUDENT_PREFIX, fed)
    return row


def summary(
    rows: list[dict[str, Any]], setting: str, chance: tuple[Sequence[int], int]
) -> dict[str, dict[str, Any]]:
    """Per method of ``setting``: the main job's summary (mean, std, the paired test vs
    the baseline, the runs at ``chance`` level: test labels, classes) and, for REFILLED,
    the mean stage-1 NCM accuracy."""
    import statistics

    from pyirg.experiment import summarize

    runs = [r for r in rows if r["setting"] == setting]
    out: dict[str, dict[str, Any]] = summarize(runs, METHODS[setting], chance)
    for method, entry in out.items():
        ncm = [r["ncm_accuracy"] for r in runs if r["method"] == method and "ncm_accuracy" in r]
        if ncm:
            entry["ncm_mean"] = statistics.fmean(ncm)
    return out


def format_table(results: dict[str, Any]) -> str:
    """The README's table: one block per setting, in points (percent)."""
    from pyirg.experiment import chance_lines

    lines, teachers = [], results["teachers"]
    for setting, methods in results["summary"].items():
        lines += [
            f"**{setting}** ({teachers[setting]['label']}, accuracy on its own task "
            f"{100 * teachers[setting]['accuracy']:.2f})",
            "",
            "| student | accuracy (mean ± std) | Δ vs baseline [95% CI] | W/T/L | stage-1 NCM |",
            "|---|---|---|---|---|",
        ]
        for method, e in methods.items():
            p = e.get("vs_baseline")
            delta = (
                f"{100 * p['mean_diff']:+.2f} [{100 * p['ci_low']:+.2f}, {100 * p['ci_high']:+.2f}]"
                if p else "—"
            )  # fmt: skip
            wtl = f"{p['wins']}/{p['ties']}/{p['losses']}" if p else "—"
            ncm = f"{100 * e['ncm_mean']:.2f}" if "ncm_mean" in e else "—"
            accuracy = f"{100 * e['mean']:.2f} ± {100 * e['std']:.2f}"
            lines.append(f"| {method} | {accuracy} | {delta} | {wtl} | {ncm} |")
        flagged = chance_lines(methods, "a lower --teaching-weight (REFILLED)")
        lines += ["", *flagged, ""] if flagged else [""]
    lines.append(results["machine"])
    return "\n".join(lines)


def run(cfg: DemoConfig) -> dict[str, Any]:
    """Teachers first, then every (setting, method, seed) student in parallel."""
    import multiprocessing

    from pyirg.experiment import evaluate, machine_line, machine_text, usable_cores

    started = time.time()
    workers = cfg.jobs or usable_cores()
    teachers, tasks, chance = {}, [], {}
    for name in cfg.settings:
        setting = load_setting(name, cfg.train_per_class)
        weights = train_teacher(setting, cfg)
        teacher_spec, _ = _specs(setting)
        teachers[name] = {
            "weights": str(weights),
            "accuracy": evaluate(teacher_spec, weights, "", setting.teacher_data),
            "label": f"teacher on digits {'0-4' if name == 'cross-task' else '0-9'}",
        }
        chance[name] = (setting.student_data.test_labels, setting.student_set.num_classes)
        for seed in cfg.seeds:
            init_weights(setting, cfg, seed)
            tasks += [(name, m, seed, cfg, weights) for m in METHODS[name]]
    context = multiprocessing.get_context("spawn")
    rows = []
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        for row in pool.map(_task, tasks):
            rows.append(row)
            if cfg.progress:
                print(f"{row['setting']} {row['method']} seed {row['seed']}: "
                      f"{100 * row['accuracy']:.2f}", flush=True)  # fmt: skip
    machine = machine_line(workers)
    results = {
        "config": config_record(cfg),
        "teachers": teachers,
        "runs": rows,
        "summary": {name: summary(rows, name, chance[name]) for name in cfg.settings},
        "seconds": round(time.time() - started),
    }
    machine["seconds"] = results["seconds"]
    results["machine"] = machine_text(machine, "1 BLAS thread per training")
    (cfg.out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    table = format_table(results)
    (cfg.out / "results.md").write_text(table + "\n")
    print("\n" + table)
    return results


def _task(args: tuple) -> dict[str, Any]:
    return train_student(*args)


def build_parser() -> argparse.ArgumentParser:
    return parser_for(
        DemoConfig,
        "refilled-demo",
        "REFILLED on the embedded digits: cross-task and standard, paired seeds.",
    )


def main(argv: list[str] | None = None) -> int:
    """``pyirg refilled-demo``: train, print the table, write results.{json,md}."""
    from pyirg.train import TrainError

    args = build_parser().parse_args(argv)
    try:
        cfg = from_args(DemoConfig, args)
        cfg.out.mkdir(parents=True, exist_ok=True)
        run(cfg)
    except (TrainError, ValueError) as e:
        return one_line_error("refilled-demo", e)
    return 0
