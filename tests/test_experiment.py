"""The main job in a reduced form: every method trains through Caffe end to end."""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, run
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("caffe")  # pyirg.experiment builds its nets with pycaffe's NetSpec

from pyirg import experiment
from pyirg.cli import COMMANDS
from pyirg.experiment import ExperimentConfig, Run, Scheduler, paired, summarize
from pyirg.experiment import main as main_job

ENV = dict(os.environ, GLOG_minloglevel="2", MPLBACKEND="Agg")


def _quick(out: Path, *extra: str) -> tuple:
    argv = [sys.executable, "-m", "pyirg", "main", "--quick", "--no-progress", "--out", str(out)]
    proc = run([*argv, *extra], cwd=REPO, env=ENV)
    assert proc.returncode == 0
    return proc, json.loads((out / "results.json").read_text())


def _digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.mark.slow
def test_main_job_quick(tmp_path: Path) -> None:
    pytest.importorskip("caffe")
    out = tmp_path / "digits"
    proc, results = _quick(out, "--jobs", "2")
    methods = {r["method"] for r in results["runs"]}
    assert methods == {"baseline", "IRG", "IRG-t", "MTK"}
    assert len(results["runs"]) == 8  # two seeds in --quick
    for r in results["runs"]:
        assert 0.0 <= r["accuracy"] <= 1.0
        assert Path(r["weights"]).is_file()
    assert (out / "results.png").stat().st_size > 0
    for name in ("teacher", "student"):
        assert "Softmax" in (out / f"deploy_{name}.prototxt").read_text()
    table = (out / "results.md").read_text()
    for method in methods:
        assert f"| {method} |" in table
    assert "| method | test accuracy % (mean ± std) | paired Δ vs baseline" in proc.stdout
    # the table says where it came from: CPU, BLAS kernel, threads, date
    machine = results["machine"]
    assert machine["kernel"] and machine["blas"].startswith("OpenBLAS")
    # measured inside each training (threadpoolctl), whatever --jobs is
    assert machine["blas_threads_per_training"] == [1] and machine["parallel_trainings"] == 2
    assert f"kernel {machine['kernel']}" in table and machine["date"] in table
    assert "| seed | baseline | IRG | IRG-t | MTK |" in table  # the per-seed data
    # distillation nets really contain the IRG layers they are named for
    irg = (out / "IRG" / "seed0" / "solver.effective.prototxt").read_text()
    assert "BatchEuclideanMap" in irg and "BatchEuclideanVector" not in irg
    irg_t = (out / "IRG-t" / "seed0" / "solver.effective.prototxt").read_text()
    assert "BatchEuclideanVector" in irg_t and "BatchEuclideanMap" not in irg_t
    mtk = (out / "MTK" / "seed0" / "solver.effective.prototxt").read_text()
    assert "BatchEuclideanVector" in mtk and "BatchEuclideanMap" in mtk


def test_pyirg_command_lists_subcommands() -> None:
    proc = run([sys.executable, "-m", "pyirg", "--help"], cwd=REPO)
    assert proc.returncode == 0
    for name in ("gen", "check", "prepare-data", "train", "main", "verify", "export-onnx"):
        assert f"  {name}" in proc.stdout
    bad = run([sys.executable, "-m", "pyirg", "nope"], cwd=REPO)
    assert bad.returncode == 2 and "unknown command" in bad.stderr


@pytest.mark.parametrize("script", sorted(p.name for p in (REPO / "tools").glob("*.py")))
def test_tools_are_thin_wrappers_with_help(script: str) -> None:
    proc = run([sys.executable, str(REPO / "tools" / script), "--help"], cwd=REPO)
    assert proc.returncode == 0
    assert "usage:" in proc.stdout


@pytest.mark.slow
def test_results_are_the_same_whatever_jobs_is(tmp_path: Path) -> None:
    """--jobs 1 (in this process, in order) and --jobs 2 (worker processes) give the same
    bits: every accuracy and every trained .caffemodel; so do two runs on one machine."""
    pytest.importorskip("caffe")
    _, one = _quick(tmp_path / "one", "--jobs", "1")
    _, two = _quick(tmp_path / "two", "--jobs", "2")
    assert one["teacher_accuracy"] == two["teacher_accuracy"]
    assert _digest(one["teacher_weights"]) == _digest(two["teacher_weights"])
    assert len(one["runs"]) == len(two["runs"]) == 8
    for a, b in zip(one["runs"], two["runs"]):
        assert (a["method"], a["seed"]) == (b["method"], b["seed"])
        assert a["accuracy"] == b["accuracy"] and a["curve"] == b["curve"]
        assert _digest(a["weights"]) == _digest(b["weights"]), a["weights"]
    assert one["summary"] == two["summary"]


@pytest.mark.slow
def test_every_method_starts_from_the_same_student_weights(tmp_path: Path) -> None:
    """Paired design: for one seed, the baseline's and MTK's students start identical."""
    pytest.importorskip("caffe")
    cfg = ExperimentConfig(
        out=tmp_path, seeds=(0, 1), max_iter=4, teacher_iter=4, test_interval=0, progress=False
    )
    for seed in cfg.seeds:
        experiment.write_init_weights(cfg, seed)
    teacher = experiment.train_run(cfg, Run("teacher", 0), None)
    starts: dict[tuple[str, int], dict[str, list[np.ndarray]]] = {}

    def capture(key: tuple[str, int]):
        def on_iteration(done: int, net) -> None:
            if done == 0:
                starts[key] = {
                    name: [b.data.copy() for b in blobs]
                    for name, blobs in net.params.items()
                    if name.startswith(experiment.STUDENT_PREFIX)
                }

        return on_iteration

    for method, seed in (("baseline", 0), ("MTK", 0), ("baseline", 1)):
        experiment.train_run(
            cfg, Run(method, seed), Path(teacher["weights"]), on_iteration=capture((method, seed))
        )
    base, mtk, other = starts[("baseline", 0)], starts[("MTK", 0)], starts[("baseline", 1)]
    assert base.keys() == mtk.keys() and len(base) > 10
    for name in base:
        for a, b in zip(base[name], mtk[name]):
            assert np.array_equal(a, b), name
    # another seed is another start (so the comparison above could fail)
    conv = next(n for n in base if "Convolution" in n)
    assert not np.array_equal(base[conv][0], other[conv][0])


def test_paired_statistics_match_scipy() -> None:
    scipy_stats = pytest.importorskip("scipy.stats")
    base = [0.80, 0.82, 0.79, 0.85, 0.81]
    other = [0.83, 0.82, 0.80, 0.88, 0.80]
    p = paired(base, other)
    ci = scipy_stats.ttest_rel(other, base).confidence_interval(0.95)
    assert p["ci_low"] == pytest.approx(ci.low) and p["ci_high"] == pytest.approx(ci.high)
    assert p["mean_diff"] == pytest.approx(np.mean(np.subtract(other, base)))
    assert (p["wins"], p["ties"], p["losses"]) == (3, 1, 1)
    one = paired([0.5], [0.6])
    assert one["n"] == 1 and np.isnan(one["ci_low"])
    with pytest.raises(ValueError):
        paired([0.5, 0.6], [0.6])


def test_summary_pairs_runs_by_seed_not_by_order() -> None:
    runs = [
        {"method": "baseline", "seed": 1, "accuracy": 0.7},
        {"method": "IRG", "seed": 0, "accuracy": 0.9},
        {"method": "baseline", "seed": 0, "accuracy": 0.8},
        {"method": "IRG", "seed": 1, "accuracy": 0.7},
    ]
    s = summarize(runs, ("baseline", "IRG"))["IRG"]["vs_baseline"]
    assert s["mean_diff"] == pytest.approx(0.05)
    assert (s["wins"], s["ties"], s["losses"]) == (1, 1, 0)


def test_runs_at_chance_are_counted_and_the_table_says_so() -> None:
    # 10 balanced classes over 400 test images: the bar is 0.1 + 3 * sqrt(0.09 / 400) = 0.145.
    runs = [
        {"method": m, "seed": seed, "accuracy": a}
        for m, accs in (("baseline", (0.80, 0.82)), ("MTK", (0.10, 0.85)))
        for seed, a in enumerate(accs)
    ]
    summary = summarize(runs, ("baseline", "MTK"), (list(range(10)) * 40, 10))
    assert summary["baseline"]["at_chance"] == 0 and summary["MTK"]["at_chance"] == 1
    assert summary["MTK"]["chance_bar"] == pytest.approx(0.145)
    (line,) = experiment.chance_lines(summary, "another --base-lr")
    assert line.startswith("- **MTK: 1 of 2 runs ended at chance level**") and "14.50%" in line
    assert line.endswith("try another --base-lr.")
    assert "at_chance" not in summarize(runs, ("baseline", "MTK"))["MTK"]


def test_verdict_says_what_the_interval_says() -> None:
    ahead = paired([0.80, 0.81, 0.79], [0.85, 0.85, 0.84])
    said = experiment.verdict("IRG", ahead)
    assert "excludes 0" in said and "ahead" in said
    noise = paired([0.80, 0.81, 0.79], [0.81, 0.79, 0.80])
    assert "contains 0" in experiment.verdict("IRG", noise)


def _parsers(parser):
    yield parser
    for action in parser._actions:
        if action.choices and isinstance(action.choices, dict):  # subcommands
            for sub in action.choices.values():
                yield from _parsers(sub)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_option_has_help_with_its_default(command: str) -> None:
    """Every option of every subcommand says what it does, and the help shows its default."""
    module = importlib.import_module(COMMANDS[command][0])
    for parser in _parsers(module.build_parser()):
        assert issubclass(parser.formatter_class, argparse.ArgumentDefaultsHelpFormatter), (
            f"{parser.prog}: help would not show the defaults"
        )
        for action in parser._actions:
            if not action.option_strings or action.dest == "help":
                continue
            assert action.help, f"{parser.prog}: {action.option_strings} has no help"
            shown = action.default is not None and not (action.nargs == 0 and not action.default)
            auto = "%(default)" in action.help  # BooleanOptionalAction on Python < 3.12
            assert auto or not (shown and "(default" in action.help), (
                f"{parser.prog}: {action.option_strings} repeats the default by hand"
            )
        assert "usage:" in parser.format_help()


def failing_worker(cfg: ExperimentConfig, run: Run, teacher_weights, queue) -> dict:
    """Stands in for a training in a worker process: fails for baseline seed 1."""
    if run.method == "baseline" and run.seed == 1:
        raise RuntimeError("baseline seed 1 diverged")
    import time

    time.sleep(0.2)
    return {"method": run.method, "seed": run.seed, "accuracy": 0.5, "weights": "w"}


def test_a_failed_run_stops_the_job_with_its_error(tmp_path: Path) -> None:
    cfg = ExperimentConfig(out=tmp_path, seeds=tuple(range(30)), jobs=2, progress=False)
    scheduler = Scheduler(cfg, worker=failing_worker)
    with pytest.raises(RuntimeError, match="baseline seed 1 diverged"):
        scheduler.run()
    # queued runs were cancelled, not trained: far fewer than the 121 of the job
    assert len(scheduler.results) < 20


def test_an_out_folder_with_other_settings_is_refused(tmp_path: Path) -> None:
    cfg = ExperimentConfig(out=tmp_path / "job", progress=False)
    experiment.check_job_folder(cfg)
    experiment.check_job_folder(ExperimentConfig(out=cfg.out, seeds=(0, 1, 2, 3), jobs=1))
    with pytest.raises(ValueError, match="edge_weight: 0.05 there, 5.0 here"):
        experiment.check_job_folder(ExperimentConfig(out=cfg.out, edge_weight=5.0))
    legacy = tmp_path / "legacy"
    (legacy / "IRG" / "seed0").mkdir(parents=True)
    (legacy / "IRG" / "seed0" / "metrics.json").write_text("{}")
    with pytest.raises(ValueError, match="recorded no settings"):
        experiment.check_job_folder(ExperimentConfig(out=legacy))
    with pytest.raises(ValueError, match="train_per_class"):
        ExperimentConfig(train_per_class=0)


# ------------------------------------------------------------------ one-line errors


def test_expected_failures_are_one_line_with_exit_2(tmp_path: Path) -> None:
    """Each names what is wrong (the file or the option), in one line, without traceback."""
    missing = str(tmp_path / "missing.prototxt")
    cases = [
        (["train", "--solver", missing, "--out", str(tmp_path / "o")], missing),
        (["check", missing], missing),
        (["export-onnx", missing, str(tmp_path / "w"), str(tmp_path / "o")], missing),
        (["prepare-data", "cifar10", str(tmp_path / "c.tar.gz"), str(tmp_path / "x")], "c.tar.gz"),
        (["main", "--train-per-class", "0", "--out", str(tmp_path / "m")], "train_per_class"),
    ]
    for argv, names in cases:
        proc = run([sys.executable, "-m", "pyirg", *argv], cwd=REPO, env=ENV)
        output = (proc.stderr + proc.stdout).strip()
        assert proc.returncode in (1, 2), argv  # check: 1 = problems found, else 2
        assert "Traceback" not in output and names in output, (argv, output)
        assert len(output.splitlines()) <= 3, (argv, output)


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    argv = ["train", "--solver", str(tmp_path / "missing.prototxt"), "--out", str(tmp_path)]
    proc = run([sys.executable, "-m", "pyirg", "--debug", *argv], cwd=REPO, env=ENV)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_tools_without_env_sh_say_how_to_fix_it(tmp_path: Path) -> None:
    env = {k: v for k, v in ENV.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = "/usr/bin:/bin"
    proc = run(["/usr/bin/python3", str(REPO / "tools" / "train.py"), "--help"], env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "source tools/env.sh" in proc.stderr


def test_overwrite_moves_only_a_job_folder_aside(tmp_path: Path) -> None:
    job = tmp_path / "job"
    experiment.check_job_folder(ExperimentConfig(out=job))
    aside = experiment.move_job_aside(job)
    assert aside is not None and (aside / experiment.JOB_FILE).is_file() and not job.exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(ValueError, match="holds no pyirg main job"):
        experiment.move_job_aside(mine)
    assert (mine / "notes.txt").read_text() == "keep"


def test_non_finite_widths_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="teacher_width must be a positive finite"):
        ExperimentConfig(teacher_width=float("nan"))


def test_quick_keeps_the_options_given_explicitly(capsys) -> None:
    with pytest.raises(SystemExit) as info:  # --max-iter 0 was silently replaced by 24
        main_job(["--quick", "--max-iter", "0", "--out", "/nonexistent/never"])
    assert info.value.code == 2 and "max_iter" in capsys.readouterr().err


def test_main_refuses_weights_its_methods_do_not_use(capsys) -> None:
    for argv in (
        ["--methods", "baseline", "--edge-weight", "0.7"],
        ["--methods", "IRG", "--transform-weight", "0.3"],
    ):
        with pytest.raises(SystemExit) as info:
            main_job(["--quick", "--out", "/nonexistent/never", *argv])
        assert info.value.code == 2 and "not used by --methods" in capsys.readouterr().err


def test_main_checks_the_depth_irg_t_needs_before_training() -> None:
    with pytest.raises(ValueError, match="student_depth must be >= 14"):
        ExperimentConfig(methods=("baseline", "IRG-t"), student_depth=8)
    ExperimentConfig(methods=("baseline", "IRG"), student_depth=8)


def test_negative_seeds_are_refused() -> None:
    with pytest.raises(ValueError, match="seeds must be >= 0"):
        ExperimentConfig(seeds=(-1,))
    with pytest.raises(ValueError, match="seeds must be >= 0"):
        ExperimentConfig(teacher_seed=-1)


numbers = st.one_of(
    st.integers(-3, 1000),
    st.floats(allow_nan=True, allow_infinity=True, width=32),
)


@settings(max_examples=200, deadline=None)
@given(
    batch=st.integers(-2, 300),
    max_iter=st.integers(-2, 50),
    train_per_class=st.integers(-2, 400),
    jobs=st.integers(-2, 8),
    edge=numbers,
    lr=numbers,
)
def test_main_options_are_either_valid_or_refused(
    batch, max_iter, train_per_class, jobs, edge, lr
) -> None:
    try:
        cfg = ExperimentConfig(
            batch=batch,
            max_iter=max_iter,
            train_per_class=train_per_class,
            jobs=jobs,
            edge_weight=float(edge),
            base_lr=float(lr),
        )
    except ValueError as e:
        assert str(e)  # refused with a message (never another exception type)
        return
    assert cfg.batch >= 2 and cfg.max_iter >= 4 and cfg.jobs >= 0
    assert 1 <= cfg.train_per_class <= 173
    assert math.isfinite(cfg.edge_weight) and cfg.edge_weight >= 0
    assert math.isfinite(cfg.base_lr) and cfg.base_lr >= 0
