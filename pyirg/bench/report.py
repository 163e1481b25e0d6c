"""The one renderer of a run: the tables of bench.md (printed on the console too) and bench.png.

Why everything comes from the bench.json dict: the tables in docs/benchmarks.md are
regenerated from a saved run, so none is hand-copied, the console shows what the file
says, and a test can check bench.md against bench.json. matplotlib is imported (and its
backend set) only when a plot is drawn.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pyirg.bench.layers import TORCH_FORMS


def table(head: Sequence[str], align: str, rows: Iterable[Sequence[object]]) -> list[str]:
    """A markdown table; ``align`` holds one letter per column, ``l`` or ``r``."""

    def line(cells: Sequence[object]) -> str:
        return "| " + " | ".join(map(str, cells)) + " |"

    return [line(head), "|" + "".join("---:|" if a == "r" else "---|" for a in align)] + [
        line(r) for r in rows
    ]


def _cell(t: dict[str, Any]) -> str:
    return f"{t['median_ms']:.3f} ({t['q1_ms']:.3f}-{t['q3_ms']:.3f})"


def _machine(result: dict[str, Any]) -> str:
    meta = result["meta"]
    ob = meta["openblas"]
    return (
        f"Machine: {meta['cpu_model']}, {meta['cpus_usable']} usable cores of "
        f"{meta['cpu_count']}, {meta['mem_total']}; {meta['platform']}; Python "
        f"{meta['python']}; Caffe {meta['versions']['caffe']}, OpenBLAS `{ob['config']}` "
        f"(core {ob['corename']}), {result['threads']} BLAS threads; PyTorch "
        f"{meta['versions']['torch']} ({meta['torch_blas']}, {meta['torch_cpu_capability']}), "
        f"{meta['torch_threads']} threads; environment {meta['env'] or '{}'}; load average "
        f"{meta['loadavg_start'][0]:.2f} at the start, {meta['loadavg_end'][0]:.2f} at the end; "
        f"{meta['wall_s']:.0f} s."
    )


def _layers(layers: list[dict[str, Any]]) -> list[str]:
    lines = []
    for layer, forms in TORCH_FORMS.items():
        rows = [r for r in layers if r["layer"] == layer]
        if not rows:
            continue
        bound = "GEMM bound" if layer == "map" else "stream floor"
        head = ["N", "C", "ours (Caffe)", *(f"PyTorch {f[6:] or 'autograd'}" for f in forms)]
        head += [bound, "ours / PyTorch", f"ours / {bound}", "layer fwd", "layer bwd"]
        cells = (
            [r["n"], r["c"], _cell(r["timings"]["caffe"])]
            + [_cell(r["timings"][f]) for f in forms]
            + [f"{r['ratios']['bound_ms']:.3f}", f"{r['ratios']['vs_torch']:.2f}"]
            + [f"{r['ratios']['vs_bound']:.2f}", f"{r['timings']['layer_fwd']['median_ms']:.3f}"]
            + [f"{r['timings']['layer_bwd']['median_ms']:.3f}"]
            for r in rows
        )
        lines += [f"**{layer}**: forward + backward, ms, median (IQR)", ""]
        lines += [*table(head, "r" * len(head), cells), ""]
    return lines


def _targets(targets: list[dict[str, Any]]) -> list[str]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for t in targets:
        groups.setdefault(f"{t['layer']}: {t['target']}", []).append(t)
    rows = []
    for text, ts in groups.items():
        missed = ", ".join(
            f"{t['n']}x{t['c']} ({t['value']:.2f})" if t["c"] is not None else f"{t['value']:.2f}"
            for t in ts
            if not t["met"]
        )
        rows.append([text, f"{sum(t['met'] for t in ts)} of {len(ts)}", missed or "-"])
    return ["**targets**", "", *table(["target", "met at", "missed at (value)"], "lll", rows), ""]


def _training(training: list[dict[str, Any]]) -> list[str]:
    if not training:
        return []
    head = ["method", "batch", "with IRG", "without", "end-to-end diff (paired IQR)"]
    head += ["IRG layers' own time", "of which BatchEuclidean* + losses", "helpers (pooling)"]
    rows = []
    for t in training:
        q1, q3 = t["end_to_end_paired_diff_pct_q1_q3"]
        rows.append(
            [t["method"], t["batch"], _cell(t["with_irg"]), _cell(t["without_irg"])]
            + [f"{t['end_to_end_overhead_pct']:+.2f}% ({q1:+.2f}..{q3:+.2f}%)"]
            + [f"{t['attributed_overhead_pct']:.3f}%"]
            + [f"{t['irg_core_ms']:.3f} ms ({t['irg_core_overhead_pct']:.3f}%)"]
            + [f"{t['helpers_ms']:.3f} ms ({t['helpers_overhead_pct']:.3f}%)"]
        )
    title = "**training iteration** (`solver.step(1)`, ms, median (IQR))"
    return [title, "", *table(head, "lrrrrrrr", rows), ""]


def _refilled(rows: list[dict[str, Any]]) -> list[str]:
    """The REFILLED layers against their PyTorch reference, one line per mode and N."""
    if not rows:
        return []
    head = ["layer", "mode", "N", "D / K", "D'", "ours (Caffe)", "PyTorch reference"]
    head += ["ours / PyTorch", "layer fwd", "layer bwd"]
    cells = (
        [r["layer"], r["mode"], r["n"], r["dims"]["student"], r["dims"]["teacher"]]
        + [_cell(r["timings"]["caffe"]), _cell(r["timings"]["torch"]), f"{r['vs_torch']:.3f}"]
        + [f"{r['timings'][k]['median_ms']:.3f}" for k in ("layer_fwd", "layer_bwd")]
        for r in rows
    )
    title = (
        "**REFILLED layers**: forward + backward, ms, median (IQR); labels uniform over "
        f"{rows[0]['dims']['classes']} classes"
    )
    return [title, "", *table(head, "llrrrrrrrr", cells), ""]


def _stages(stages: list[dict[str, Any]]) -> list[str]:
    if not stages:
        return []
    head = ["stage", "layer", "teacher -> student", "batch", "iteration (`solver.step(1)`)"]
    head += ["layer's own fwd + bwd", "share"]
    rows = [
        [st["stage"], st["layer"], f"{st['pair']['teacher']} -> {st['pair']['student']}"]
        + [st["batch"], _cell(st["step"]), f"{st['layer_ms']:.3f} ms"]
        + [f"{st['layer_share_pct']:.3f}%"]
        for st in stages
    ]
    return ["**REFILLED stage iterations** (ms)", "", *table(head, "llllrrr", rows), ""]


def _memory(memory: list[dict[str, Any]]) -> list[str]:
    if not memory:
        return []
    head = ["layer", "N", "from the code", "parts", "heap residual observed"]
    head += ["minus the vector net's"]
    rows = []
    for m in memory:
        parts = ", ".join(f"`{k}` {v}" for k, v in m["computed"].items() if k != "total")
        net = "-" if m["observed_minus_baseline"] is None else m["observed_minus_baseline"]
        rows.append(
            [m["layer"], m["n"], m["computed"]["total"], parts, m["observed_residual"], net]
        )
    return ["**extra memory beyond the top** (bytes, float)", "", *table(head, "lrrlrr", rows)]


def _blas(rows: list[dict[str, Any]]) -> list[str]:
    """The BLAS comparison: Caffe's convolution GEMMs per library/kernel, one thread."""
    ok = [r for r in rows if "per_image_s" in r]
    if not ok:
        return []
    chosen = next((r for r in ok if r.get("chosen")), ok[0])
    cells = (
        [f"{r['library']}{' (in use)' if r is chosen else ''}", f"{1e3 * r['per_image_s']:.3f}"]
        + [f"{r['per_image_s'] / chosen['per_image_s']:.2f}"]
        + [f"{max(g['err'] for g in r['gemms']):.1e}"]
        for r in ok
    )
    head = ["library / kernel", "ms per image", "time / in use", "max rel. error vs float64"]
    return [
        "",
        "**BLAS for Caffe's convolutions**: the im2col GEMMs (forward, weight and data "
        "gradients) of one 32x32 image through ResNet-20, one thread, best of the repetitions",
        "",
        *table(head, "lrrr", cells),
        *(f"| {r['library']} | failed: {r['error']} | | |" for r in rows if "error" in r),
    ]


def _rest(timings: dict[str, Any], whole: str, parts: tuple[str, ...]) -> str:
    """``whole`` less ``parts`` (ms, medians), said as what it is: "~0" within the
    timings' spread (half their interquartile ranges, summed: the samples' spread, a
    generous bar for a difference of medians), a time above it, and below it a sign that
    the parts timed alone took longer than in the whole, which no remainder can be."""
    med = {k: timings[k]["median_ms"] for k in (whole, *parts)}
    rest = med[whole] - sum(med[k] for k in parts)
    spread = sum((timings[k]["q3_ms"] - timings[k]["q1_ms"]) / 2 for k in (whole, *parts))
    if abs(rest) <= spread:
        return f"~0 (within the samples' spread, +-{spread:.3f})"
    if rest < 0:
        return f"none: the parts alone took {-rest:.3f} longer"
    return f"{rest:.3f}"


def _profile(result: dict[str, Any]) -> list[str]:
    """Where the time of each size with a missed target goes (ms, medians): BLAS or the rest."""
    missed = {(t["layer"], t["n"], t["c"]) for t in result["targets"] if not t["met"]}
    rows = [r for r in result["layers"] if (r["layer"], r["n"], r["c"]) in missed]
    lines = ["", "**profile of missed sizes** (ms, medians)", ""] if rows else []
    phases = ("layer_fwd", "loss_fwd", "loss_bwd", "layer_bwd")
    for r in rows:
        timings = r["timings"]
        t = {k: v["median_ms"] for k, v in timings.items()}
        ref = r["ratios"]["torch_impl"]
        torch = f"PyTorch {t[ref]:.3f}"
        if "torch_gemms" in t:
            torch += (
                f" ({ref}), of which its 3 GEMMs (MKL) {t['torch_gemms']:.3f} vs our 2 "
                f"(OpenBLAS) {t['bound_fwd'] + t['bound_bwd']:.3f}"
            )
        lines.append(
            f"- {r['layer']} N={r['n']} C={r['c']}: total {t['caffe']:.3f} = layer fwd "
            f"{t['layer_fwd']:.3f} (bound {t['bound_fwd']:.3f}, rest "
            f"{_rest(timings, 'layer_fwd', ('bound_fwd',))}) + layer bwd {t['layer_bwd']:.3f} "
            f"(bound {t['bound_bwd']:.3f}, rest {_rest(timings, 'layer_bwd', ('bound_bwd',))}) "
            f"+ loss {t['loss_fwd'] + t['loss_bwd']:.3f} + pycaffe/net "
            f"{_rest(timings, 'caffe', phases)}; {torch}"
        )
    return lines


def render(result: dict[str, Any], profile: bool = False) -> str:
    """bench.md from a bench.json dict; ``profile`` adds, for the console, where the time
    of each missed size goes (bench.md leaves that to bench.json's per-phase timings)."""
    lines = [_machine(result), "", *_layers(result["layers"])]
    lines += _refilled(result.get("refilled", [])) + _targets(result["targets"])
    lines += _training(result["training"]) + _stages(result.get("refilled_stages", []))
    lines += _memory(result["memory"])
    lines += _blas(result.get("blas_choice", []))
    return "\n".join(lines + (_profile(result) if profile else [])) + "\n"


def _quartiles(row: dict[str, Any], key: str) -> tuple[float, float, float]:
    """(q1, median, q3) in ms; the bound's from the repetition-wise sum of its two phases."""
    t = row["timings"]
    if key == "bound":
        both = np.add(t["bound_fwd"]["samples_ms"], t["bound_bwd"]["samples_ms"])
        q1, med, q3 = np.percentile(both, (25, 50, 75))
        return float(q1), float(med), float(q3)
    return t[key]["q1_ms"], t[key]["median_ms"], t[key]["q3_ms"]


def _n(row: dict[str, Any]) -> int:
    return row["n"]


def plot(layers: list[dict[str, Any]], path: Path) -> None:
    """Time vs N, log-log, one panel per C; map on top, vector below; bars are the IQR."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cs = sorted({r["c"] for r in layers})
    kinds = [x for x in TORCH_FORMS if any(r["layer"] == x for r in layers)]
    fig, axes = plt.subplots(
        len(kinds), len(cs), figsize=(4.2 * len(cs), 3.6 * len(kinds)), squeeze=False
    )
    labels = {
        "caffe": "ours (Caffe)",
        "torch_gram": "PyTorch gram",
        "torch_cdist": "PyTorch cdist",
        "torch": "PyTorch",
    }
    for i, layer in enumerate(kinds):
        bound = "GEMM bound" if layer == "map" else "stream floor"
        for j, c in enumerate(cs):
            ax = axes[i][j]
            sel = sorted((r for r in layers if (r["layer"], r["c"]) == (layer, c)), key=_n)
            for key in ("caffe", *TORCH_FORMS[layer], "bound"):
                q1, med, q3 = np.array([_quartiles(r, key) for r in sel]).T
                ax.errorbar(
                    [r["n"] for r in sel],
                    med,
                    yerr=[med - q1, q3 - med],
                    marker="o",
                    capsize=3,
                    label=labels.get(key, bound),
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
