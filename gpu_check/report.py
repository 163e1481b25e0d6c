"""The portable GPU check's one table: Caffe's layers beside their bounds and PyTorch.

Reads RESULTS_DIR/caffe_bench.tsv (irg_gpu_bench), torch_bench.tsv
(torch_bench.py, if it ran) and gtests.log, prints the table last and writes it,
with the environment, to RESULTS_DIR/summary.md. Standard library only: the GPU
machine has python3 but nothing of ours.

    python3 report.py RESULTS_DIR
"""

from __future__ import annotations

import csv
import re
import sys
from pathlib import Path


def read_tsv(path: Path) -> list[dict[str, str]]:
    """Rows of a TSV with a header line; [] when the file is missing."""
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def gtest_line(log: Path) -> str:
    """gtest's PASSED/FAILED summary, or why there is none."""
    if not log.is_file():
        return "gtests: not run"
    text = log.read_text(errors="replace")
    passed = re.search(r"\[  PASSED  \] (\d+) tests?", text)
    failed = re.search(r"\[  FAILED  \] (\d+) tests?, listed below", text)
    if not passed:
        return "gtests: no summary (crashed? see gtests.log)"
    return f"gtests: {passed.group(1)} passed, {failed.group(1) if failed else 0} failed"


def table(caffe: list[dict[str, str]], torch: list[dict[str, str]]) -> list[str]:
    """Markdown rows: one per layer x N x C."""
    torch_ms = {(r["layer"], r["n"], r["c"]): float(r["ms"]) for r in torch}
    lines = [
        "| layer | N | C | Caffe fwd+bwd ms | reference | reference ms | Caffe / reference "
        "| PyTorch ms | Caffe / PyTorch | launches fwd/bwd | D2H copies |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in caffe:
        ms, ref_ms = float(r["ms"]), float(r["ref_ms"])
        t = torch_ms.get((r["layer"], r["n"], r["c"]))
        launches = "/".join("-" if r[k] == "-1" else r[k] for k in ("fwd_kernels", "bwd_kernels"))
        d2h = "-" if r["d2h"] == "-1" else r["d2h"]
        lines.append(
            f"| {r['layer']} | {r['n']} | {r['c']} | {ms:.4f} | {r['ref']} | {ref_ms:.4f} "
            f"| {ms / ref_ms:.2f} | {'-' if t is None else f'{t:.4f}'} "
            f"| {'-' if t is None else f'{ms / t:.2f}'} | {launches} | {d2h} |"
        )
    return lines


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__)
        return 2
    out = Path(argv[0])
    caffe = read_tsv(out / "caffe_bench.tsv")
    torch = read_tsv(out / "torch_bench.tsv")
    env = (out / "environment.txt").read_text() if (out / "environment.txt").is_file() else ""
    notes = [gtest_line(out / "gtests.log")]
    if not torch:
        notes.append("PyTorch: not measured (see torch_bench.log)")
    if caffe and caffe[0]["fwd_kernels"] == "-1":
        notes.append(
            "launches/copies: not measured (no CUPTI); by the code: map 4 forward / 5 "
            "backward, vector 3 / 2, no device-to-host copies"
        )
    rows = table(caffe, torch) if caffe else ["(no Caffe measurements: see caffe_bench.log)"]
    summary = ["# irg-caffe portable GPU check", "", "```", env.strip(), "```", ""]
    summary += [f"- {n}" for n in notes] + [""] + rows
    (out / "summary.md").write_text("\n".join(summary) + "\n")
    print()
    for n in notes:
        print(n)
    print(f"(summary: {out / 'summary.md'})")
    print()
    print("\n".join(rows))
    return 0 if caffe else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
