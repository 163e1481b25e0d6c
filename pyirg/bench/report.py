"""What a run leaves behind: bench.json rows, the markdown of docs/benchmarks.md, bench.png.

Why the markdown comes from the JSON: the tables in the docs are regenerated from a
saved run, so none is hand-copied and a test can check bench.md against bench.json.
matplotlib is imported (and its backend set) only when a plot is drawn.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def to_json(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "layer": r["layer"],
            "n": r["n"],
            "c": r["c"],
            "loadavg_1min": r["loadavg_1min"],
            "ratios": r["ratios"],
            "timings": {k: v.summary() for k, v in r["timings"].items()},
        }
        for r in rows
    ]


def _cell(t: dict[str, Any]) -> str:
    return f"{t['median_ms']:.3f} ({t['q1_ms']:.3f}-{t['q3_ms']:.3f})"


def markdown(result: dict[str, Any]) -> str:
    """The tables of docs/benchmarks.md, from a bench.json dict (so none is hand-copied)."""
    meta, lines = result["meta"], []
    ob = meta["openblas"]
    lines += [
        f"Machine: {meta['cpu_model']}, {meta['cpus_usable']} usable cores of "
        f"{meta['cpu_count']}, {meta['mem_total']}; {meta['platform']}; Python "
        f"{meta['python']}; Caffe {meta['versions']['caffe']}, OpenBLAS `{ob['config']}` "
        f"(core {ob['corename']}), {result['threads']} BLAS threads; PyTorch "
        f"{meta['versions']['torch']} ({meta['torch_blas']}, {meta['torch_cpu_capability']}), "
        f"{meta['torch_threads']} threads; environment {meta['env'] or '{}'}; load average "
        f"{meta['loadavg_start'][0]:.2f} at the start, {meta['loadavg_end'][0]:.2f} at the end; "
        f"{meta['wall_s']:.0f} s.",
        "",
    ]
    for layer in ("map", "vector"):
        rows = [r for r in result["layers"] if r["layer"] == layer]
        if not rows:
            continue
        refs = ["torch_gram", "torch_cdist"] if layer == "map" else ["torch"]
        bound = "GEMM bound" if layer == "map" else "stream floor"
        lines += [
            f"**{layer}**: forward + backward, ms, median (IQR)",
            "",
            "| N | C | ours (Caffe) | "
            + " | ".join(f"PyTorch {r[6:] or 'autograd'}" for r in refs)
            + f" | {bound} | ours / PyTorch | ours / {bound} | layer fwd | layer bwd |",
            "|---:|---:|---:|" + "---:|" * len(refs) + "---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            t, q = r["timings"], r["ratios"]
            lines.append(
                f"| {r['n']} | {r['c']} | {_cell(t['caffe'])} | "
                + " | ".join(_cell(t[x]) for x in refs)
                + f" | {q['bound_ms']:.3f} | {q['vs_torch']:.2f} | {q['vs_bound']:.2f} | "
                f"{t['layer_fwd']['median_ms']:.3f} | {t['layer_bwd']['median_ms']:.3f} |"
            )
        lines.append("")
    lines += ["**targets**", "", "| target | met at | missed at (value) |", "|---|---|---|"]
    groups: dict[str, list[dict[str, Any]]] = {}
    for t in result["targets"]:
        groups.setdefault(f"{t['layer']}: {t['target']}", []).append(t)
    for text, ts in groups.items():
        met = [t for t in ts if t["met"]]
        missed = ", ".join(
            f"{t['n']}x{t['c']} ({t['value']:.2f})" if t["c"] is not None else f"{t['value']:.2f}"
            for t in ts
            if not t["met"]
        )
        lines.append(f"| {text} | {len(met)} of {len(ts)} | {missed or '-'} |")
    lines.append("")
    if result["training"]:
        lines += [
            "**training iteration** (`solver.step(1)`, ms, median (IQR))",
            "",
            "| method | batch | with IRG | without | end-to-end diff (paired IQR) | IRG layers' "
            "own time | of which BatchEuclidean* + losses | helpers (pooling) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for t in result["training"]:
            q1, q3 = t["end_to_end_paired_diff_pct_q1_q3"]
            lines.append(
                f"| {t['method']} | {t['batch']} | {_cell(t['with_irg'])} | "
                f"{_cell(t['without_irg'])} | {t['end_to_end_overhead_pct']:+.2f}% "
                f"({q1:+.2f}..{q3:+.2f}%) | {t['attributed_overhead_pct']:.3f}% | "
                f"{t['irg_core_ms']:.3f} ms ({t['irg_core_overhead_pct']:.3f}%) | "
                f"{t['helpers_ms']:.3f} ms ({t['helpers_overhead_pct']:.3f}%) |"
            )
        lines.append("")
    lines += [
        "**extra memory beyond the top** (bytes, float)",
        "",
        "| layer | N | from the code | parts | heap residual observed | minus the vector net's |",
        "|---|---:|---:|---|---:|---:|",
    ]
    for m in result["memory"]:
        parts = ", ".join(f"`{k}` {v}" for k, v in m["computed"].items() if k != "total")
        net = m["observed_minus_baseline"]
        lines.append(
            f"| {m['layer']} | {m['n']} | {m['computed']['total']} | {parts} | "
            f"{m['observed_residual']} | {net if net is not None else '-'} |"
        )
    lines += blas_markdown(result.get("blas_choice", []))
    return "\n".join(lines) + "\n"


def blas_markdown(rows: list[dict[str, Any]]) -> list[str]:
    """The BLAS comparison: Caffe's convolution GEMMs per library/kernel, one thread."""
    ok = [r for r in rows if "per_image_s" in r]
    if not ok:
        return []
    chosen = next((r for r in ok if r.get("chosen")), ok[0])
    lines = [
        "",
        "**BLAS for Caffe's convolutions**: the im2col GEMMs (forward, weight and data "
        "gradients) of one 32x32 image through ResNet-20, one thread, best of the repetitions",
        "",
        "| library / kernel | ms per image | time / in use | max rel. error vs float64 |",
        "|---|---:|---:|---:|",
    ]
    for r in ok:
        mark = " (in use)" if r is chosen else ""
        err = max(g["err"] for g in r["gemms"])
        lines.append(
            f"| {r['library']}{mark} | {1e3 * r['per_image_s']:.3f} | "
            f"{r['per_image_s'] / chosen['per_image_s']:.2f} | {err:.1e} |"
        )
    lines += [f"| {r['library']} | failed: {r['error']} | | |" for r in rows if "error" in r]
    return lines


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Time vs N, log-log, one panel per C; map on top, vector below; bars are the IQR."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cs = sorted({r["c"] for r in rows})
    layers = [x for x in ("map", "vector") if any(r["layer"] == x for r in rows)]
    fig, axes = plt.subplots(
        len(layers), len(cs), figsize=(4.2 * len(cs), 3.6 * len(layers)), squeeze=False
    )
    series = {
        "map": [
            ("caffe", "ours (Caffe)"),
            ("torch_gram", "PyTorch gram"),
            ("torch_cdist", "PyTorch cdist"),
            ("bound", "GEMM bound"),
        ],
        "vector": [("caffe", "ours (Caffe)"), ("torch", "PyTorch"), ("bound", "stream floor")],
    }
    for i, layer in enumerate(layers):
        for j, c in enumerate(cs):
            ax = axes[i][j]
            sel = sorted(
                (r for r in rows if r["layer"] == layer and r["c"] == c), key=lambda r: r["n"]
            )
            for key, label in series[layer]:
                ts = [
                    r["timings"]["bound_fwd"].plus(r["timings"]["bound_bwd"])
                    if key == "bound"
                    else r["timings"][key]
                    for r in sel
                ]
                med = np.array([t.median for t in ts]) * 1e3
                lo = med - np.array([t.q(25) for t in ts]) * 1e3
                hi = np.array([t.q(75) for t in ts]) * 1e3 - med
                ax.errorbar(
                    [r["n"] for r in sel],
                    med,
                    yerr=[lo, hi],
                    marker="o",
                    capsize=3,
                    label=label,
                    linestyle="--" if key == "bound" else "-",
                )
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{layer}, C = {c}")
            ax.set_xlabel("N (instances)")
            ax.set_ylabel("forward + backward (ms)")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
