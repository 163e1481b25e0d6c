"""tools/bench.py keeps working: its quick mode runs and writes well-formed results.

Nothing here looks at how fast anything is (timings on a shared machine are not a test
outcome); it checks that every implementation was timed, that the numbers are sane
shapes and signs, and that the pure helpers (memory accounting, net stripping, the
interleaved timer) do what the benchmark's conclusions rely on.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
from conftest import REPO, run, run_pyirg

from pyirg.bench import layers, report, timing, training


def _positive(x: object) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_measure_interleaves_and_groups_pools() -> None:
    calls: list[str] = []
    fns = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "t")}
    pools = {"a": "blas", "b": "blas", "t": "torch"}
    timings = timing.measure(fns, pools, reps=4, min_sample_s=0.0, warmup=1, settle={})
    assert set(timings) == {"a", "b", "t"}
    for t in timings.values():
        assert len(t.samples) == 4 and t.inner == 1
        assert all(s >= 0 for s in t.samples)
    # After calibration, each repetition runs one pool's functions back to back (plus a
    # priming call), so a sample never directly follows the other pool's work.
    timed = calls[2 * 3 :]
    runs = [timed[0]]
    for name in timed[1:]:
        if pools[name] != pools[runs[-1]]:
            runs.append(name)
    assert len(runs) <= 2 * 4


def test_timing_summary_and_plus() -> None:
    t = timing.Timing([0.001, 0.003, 0.002], inner=5)
    s = t.summary()
    assert s["median_ms"] == pytest.approx(2.0)
    assert s["min_ms"] == pytest.approx(1.0) and s["max_ms"] == pytest.approx(3.0)
    assert t.plus(t).samples == [0.002, 0.006, 0.004]


def test_layer_extra_bytes_from_the_code() -> None:
    n = 256
    m = layers.layer_extra_bytes("map", n)
    assert m == {"pairs_": 4 * n * n, "ones_": 8 * n, "norm_": 12, "total": 4 * n * n + 8 * n + 12}
    assert layers.layer_extra_bytes("vector", n) == {"norm_": 12, "total": 12}


@pytest.mark.usefixtures("caffe_root")
def test_strip_irg_removes_only_the_irg_layers() -> None:
    net = training.distill_nets("MTK", batch=8)
    stripped, removed = training.strip_irg(net)
    types = {layer.type for layer in stripped.layer}
    assert not types & set(training.IRG_TYPES)
    names = {layer.name for layer in stripped.layer}
    assert {"bem", "stu_bem", "bem_loss", "bem13", "stu_bem79", "bem46_loss"} <= set(removed)
    assert not any(name.startswith(("pool_eltwise", "stu_pool_eltwise")) for name in names)
    assert {"Pooling1", "stu_Pooling1", "logits_loss", "stu_SoftmaxWithLoss1"} <= names
    assert len(stripped.layer) + len(removed) == len(net.layer)


@pytest.mark.slow
@pytest.mark.usefixtures("caffe_root")
def test_quick_run_writes_well_formed_results(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    proc = run(
        [
            sys.executable,
            str(REPO / "tools" / "bench.py"),
            "--quick",
            "--threads",
            "1",
            "--out",
            str(out),
        ],
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # The console shows the report itself: bench.md's tables, then the profile of misses.
    assert (out / "bench.md").read_text() in proc.stdout and "**map**" in proc.stdout
    png = (out / "bench.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    result = json.loads((out / "bench.json").read_text())
    assert (out / "bench.md").read_text() == report.render(result)

    meta = result["meta"]
    assert result["threads"] == 1 and meta["torch_threads"] == 1
    assert meta["openblas"]["threads"] == 1 and "openblas" in meta["openblas"]["path"]
    assert meta["cpu_model"] and meta["cpu_count"] >= 1
    assert {"caffe", "numpy", "torch"} <= set(meta["versions"])

    rows = result["layers"]
    sizes = {(r["layer"], r["n"], r["c"]) for r in rows}
    assert sizes == {
        (layer, n, c)
        for layer in ("map", "vector")
        for n in timing.QUICK.ns
        for c in timing.QUICK.cs
    }
    reps = result["settings"]["reps"]
    for r in rows:
        impls = {
            "caffe",
            "bound_fwd",
            "bound_bwd",
            "layer_fwd",
            "layer_bwd",
            "loss_fwd",
            "loss_bwd",
        }
        impls |= {"torch_gram", "torch_cdist", "torch_gemms"} if r["layer"] == "map" else {"torch"}
        assert set(r["timings"]) == impls
        for t in r["timings"].values():
            assert len(t["samples_ms"]) == reps and all(_positive(x) for x in t["samples_ms"])
            assert t["min_ms"] <= t["q1_ms"] <= t["median_ms"] <= t["q3_ms"] <= t["max_ms"]
        assert _positive(r["ratios"]["vs_torch"]) and _positive(r["ratios"]["vs_bound"])

    targets = result["targets"]
    assert targets and all(isinstance(t["met"], bool) for t in targets)
    assert {t["layer"] for t in targets} == {"map", "vector", "training", "refilled"}

    # The REFILLED layers: every mode of both at the quick N, against the reference.
    relation = result["refilled"]
    assert {(r["layer"], r["mode"], r["n"]) for r in relation} == {
        (layer, mode, n) for layer, mode in layers.VARIANTS for n in timing.QUICK.refilled_ns
    }
    for r in relation:
        assert set(r["timings"]) == {"caffe", "torch", "layer_fwd", "layer_bwd"}
        assert _positive(r["vs_torch"]) and math.isfinite(r["loss"]) and r["loss"] >= 0
        assert all(len(t["samples_ms"]) == reps for t in r["timings"].values())
    stages = result["refilled_stages"]
    assert [(st["stage"], st["layer"]) for st in stages] == [
        (1, layers.TRIPLET),
        (2, layers.CENTER),
    ]
    for st in stages:
        assert st["batch"] == timing.QUICK.stage_batch and _positive(st["step"]["median_ms"])
        assert _positive(st["layer_ms"]) and 0 < st["layer_share_pct"] < 100
    assert "**REFILLED layers**" in proc.stdout and "**REFILLED stage iterations**" in proc.stdout

    memory = result["memory"]
    assert len(memory) == 2 * len(timing.QUICK.ns)
    for m in memory:
        assert m["computed"] == layers.layer_extra_bytes(m["layer"], m["n"])

    (train,) = result["training"]
    assert train["method"] == "IRG" and train["losses_finite"]
    assert {"bem", "stu_bem", "bem_loss"} == set(train["removed_layers"])
    assert _positive(train["with_irg"]["median_ms"]) and _positive(
        train["without_irg"]["median_ms"]
    )
    assert math.isfinite(train["attributed_overhead_pct"]) and train["attributed_overhead_pct"] >= 0


def test_bench_refuses_contradicting_options() -> None:
    for argv in (
        ["--skip-train", "--train-only"],
        ["--blas-only", "--train-only"],
        ["--blas-only", "--transform-pool", "Reduction"],
        ["--refilled-only", "--train-only"],
        ["--refilled-only", "--skip-refilled"],
        ["--refilled-only", "--transform-pool", "Reduction"],
    ):
        proc = run_pyirg("bench", "--quick", *argv)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, argv
        assert "exclude each other" in proc.stderr or "applies to the training" in proc.stderr


def test_refilled_only_and_skip_refilled_select_their_parts() -> None:
    from pyirg.bench import cli

    only = cli.settings(cli.parse(["--quick", "--refilled-only"]))
    assert only.refilled_ns == timing.QUICK.refilled_ns and only.stages == (1, 2)
    assert only.ns == only.cs == () and only.train_methods == ()
    skip = cli.settings(cli.parse(["--quick", "--skip-refilled"]))
    assert skip.refilled_ns == () and skip.stages == () and skip.ns == timing.QUICK.ns
    no_train = cli.settings(cli.parse(["--skip-train"]))
    assert no_train.stages == () and no_train.refilled_ns == (64, 128, 256, 512)


def test_stage_targets_judge_the_share() -> None:
    stages = [
        {"stage": 1, "layer": layers.TRIPLET, "batch": 64, "layer_share_pct": 0.4},
        {"stage": 2, "layer": layers.CENTER, "batch": 64, "layer_share_pct": 1.5},
    ]
    judged = layers.evaluate_targets([], [], stages)
    assert [t["met"] for t in judged] == [True, False]
    assert all(t["limit"] == layers.STAGE_TARGET_PCT == 1.0 for t in judged)
    assert judged[0]["target"] == (
        "stage 1: TripletRelationLoss's own time <= 1.0% of a stage iteration"
    )


def _summary(median: float, spread: float) -> dict[str, float]:
    return {"median_ms": median, "q1_ms": median - spread, "q3_ms": median + spread}


def test_profile_rest_is_a_time_only_outside_the_noise() -> None:
    # Medians of samples taken apart do not subtract exactly: a rest smaller than the
    # timings' spread is noise, and a negative one must never be printed as a time.
    noisy = {"caffe": _summary(1.00, 0.02), "bound": _summary(1.01, 0.02)}
    assert report._rest(noisy, "caffe", ("bound",)) == "~0 (within the samples' spread, +-0.040)"
    clear = {"caffe": _summary(1.50, 0.02), "bound": _summary(1.00, 0.02)}
    assert report._rest(clear, "caffe", ("bound",)) == "0.500"
    below = {"caffe": _summary(1.00, 0.01), "bound": _summary(1.20, 0.01)}
    assert report._rest(below, "caffe", ("bound",)) == "none: the parts alone took 0.200 longer"
