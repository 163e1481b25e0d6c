"""The tables printed while the benchmark runs: medians with their spread, verdicts, profile.

Why separate from the markdown: the console shows the in-memory timings in full (phases,
bounds), while bench.md is rebuilt from bench.json alone.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from pyirg.bench.targets import TRAIN_TARGET_PCT
from pyirg.bench.timing import Timing


def _fmt(t: Timing) -> str:
    return f"{t.median * 1e3:8.3f} [{t.q(25) * 1e3:.3f}-{t.q(75) * 1e3:.3f}]"


def print_tables(rows: list[dict[str, Any]], out: Any = sys.stdout) -> None:
    """One line per size: medians [IQR] in ms, ratios, and the per-phase breakdown."""
    for layer in ("map", "vector"):
        sel = [r for r in rows if r["layer"] == layer]
        if not sel:
            continue
        refs = ["torch_gram", "torch_cdist"] if layer == "map" else ["torch"]
        head = (
            f"{'N':>4} {'C':>5} | {'caffe ms [IQR]':>24} | "
            + " | ".join(f"{r + ' ms':>24}" for r in refs)
            + f" | {'bound ms':>8} | {'/torch':>6} {'/bound':>6} | "
            "layer fwd  bwd | bound fwd  bwd | loss f+b"
        )
        bound = "GEMM: X X^T + S X" if layer == "map" else "stream: sdot + 2 scopy"
        print(f"\n== {layer} (float, CPU; bound = {bound}) ==", file=out)
        print(head, file=out)
        for r in sel:
            t, q = r["timings"], r["ratios"]
            loss = t["loss_fwd"].median + t["loss_bwd"].median
            print(
                f"{r['n']:>4} {r['c']:>5} | {_fmt(t['caffe']):>24} | "
                + " | ".join(f"{_fmt(t[x]):>24}" for x in refs)
                + f" | {q['bound_ms']:8.3f} | {q['vs_torch']:6.2f} {q['vs_bound']:6.2f} | "
                f"{t['layer_fwd'].median * 1e3:8.3f} {t['layer_bwd'].median * 1e3:7.3f} | "
                f"{t['bound_fwd'].median * 1e3:8.3f} {t['bound_bwd'].median * 1e3:7.3f} | "
                f"{loss * 1e3:7.3f}",
                file=out,
            )


def print_targets(targets: list[dict[str, Any]], out: Any = sys.stdout) -> None:
    print("\n== targets ==", file=out)
    for text in dict.fromkeys(f"{t['layer']}: {t['target']}" for t in targets):
        sel = [t for t in targets if f"{t['layer']}: {t['target']}" == text]
        missed = [t for t in sel if not t["met"]]
        verdict = "MET" if not missed else f"MISSED at {len(missed)}/{len(sel)} sizes"
        print(f"  {text}: {verdict}", file=out)
        for t in missed:
            print(f"    N={t['n']} C={t['c']}: {t['value']:.2f} > {t['limit']}", file=out)


def print_profile(
    rows: list[dict[str, Any]], targets: list[dict[str, Any]], out: Any = sys.stdout
) -> None:
    """For each size with a missed target: where the time goes (ms, medians)."""
    missed = {(t["layer"], t["n"], t["c"]) for t in targets if not t["met"]}
    if not missed:
        return
    print("\n== profile of missed sizes (ms, medians) ==", file=out)
    for r in rows:
        if (r["layer"], r["n"], r["c"]) not in missed:
            continue
        t = {k: v.median * 1e3 for k, v in r["timings"].items()}
        ref = r["ratios"]["torch_impl"]
        phases = t["layer_fwd"] + t["loss_fwd"] + t["loss_bwd"] + t["layer_bwd"]
        print(
            f"  {r['layer']} N={r['n']} C={r['c']}: total {t['caffe']:.3f} = layer fwd "
            f"{t['layer_fwd']:.3f} (bound {t['bound_fwd']:.3f}, rest "
            f"{t['layer_fwd'] - t['bound_fwd']:.3f}) + layer bwd {t['layer_bwd']:.3f} (bound "
            f"{t['bound_bwd']:.3f}, rest {t['layer_bwd'] - t['bound_bwd']:.3f}) + loss "
            f"{t['loss_fwd'] + t['loss_bwd']:.3f} + pycaffe/net {t['caffe'] - phases:.3f}"
            + (
                f"; PyTorch {t[ref]:.3f} ({ref}), of which its 3 GEMMs (MKL) "
                f"{t['torch_gemms']:.3f} vs our 2 (OpenBLAS) {t['bound_fwd'] + t['bound_bwd']:.3f}"
                if "torch_gemms" in t
                else f"; PyTorch {t[ref]:.3f}"
            ),
            file=out,
        )


def print_memory(memory: list[dict[str, Any]], out: Any = sys.stdout) -> None:
    print("\n== extra memory held by each layer beyond its top (bytes, float) ==", file=out)
    for m in memory:
        obs, net = m["observed_residual"], m["observed_minus_baseline"]
        parts = ", ".join(f"{k} {v}" for k, v in m["computed"].items() if k != "total")
        print(
            f"  {m['layer']:>6} N={m['n']:>4}: {m['computed']['total']:>9} computed ({parts}); "
            f"heap residual observed {obs if obs is not None else 'n/a'}"
            + (f", minus the vector net's (bookkeeping): {net}" if net is not None else ""),
            file=out,
        )


def print_training(train: list[dict[str, Any]], out: Any = sys.stdout) -> None:
    if not train:
        return
    print(
        f"\n== training iteration (solver.step(1)), target overhead <= {TRAIN_TARGET_PCT}% ==",
        file=out,
    )
    for t in train:
        w, wo = t["with_irg"], t["without_irg"]
        q1, q3 = t["end_to_end_paired_diff_pct_q1_q3"]
        verdict = "MET" if t["attributed_overhead_pct"] <= TRAIN_TARGET_PCT else "MISSED"
        print(
            f"  {t['method']:>5} batch {t['batch']}: with {w['median_ms']:.1f} ms "
            f"[{w['q1_ms']:.1f}-{w['q3_ms']:.1f}], without {wo['median_ms']:.1f} ms "
            f"[{wo['q1_ms']:.1f}-{wo['q3_ms']:.1f}]; "
            f"end-to-end {t['end_to_end_overhead_pct']:+.2f}%"
            f" (paired IQR {q1:+.2f}..{q3:+.2f}%); IRG layers' own time "
            f"{np.median(t['irg_layers_ms']):.3f} ms = {t['attributed_overhead_pct']:.3f}% "
            f"-> {verdict}",
            file=out,
        )
        print(
            f"        of which BatchEuclidean* + their losses {t['irg_core_ms']:.3f} ms "
            f"({t['irg_core_overhead_pct']:.3f}%), helpers (pooling, padding) "
            f"{t['helpers_ms']:.3f} ms ({t['helpers_overhead_pct']:.3f}%)",
            file=out,
        )
