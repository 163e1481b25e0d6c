"""The layers' shared per-element math (caffe/util/irg_math.hpp) compiled on its own.

The MAX normalizer's maxima must be found exactly even where the division is
approximate: ``-ffast-math`` (or nvcc's ``--use_fast_math``) lets the compiler
replace ``d / m`` by ``d * (1 / m)``, which need not give 1 for ``d == m`` nor stay
below 1 for ``d < m``. The harness counts both our ``normalized`` and that plain
reciprocal product on the same inputs, so the test also shows the approximation
is really there.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from conftest import REPO, run


def test_max_ties_are_exact_under_fast_math(caffe_root: Path, tmp_path: Path) -> None:
    multiarch = subprocess.run(
        ["gcc", "-print-multiarch"], capture_output=True, text=True, check=True
    ).stdout.strip()
    binary = tmp_path / "fast_math_ties"
    build = run(
        [
            "g++", "-O2", "-ffast-math", "-DCPU_ONLY",
            f"-I{REPO / 'caffe_layers' / 'include'}", f"-I{caffe_root / 'include'}",
            f"-I{caffe_root / '.build_release' / 'src'}",
            f"-I/usr/include/{multiarch}/openblas-pthread", "-I/usr/include/hdf5/serial",
            str(REPO / "tests" / "cpp" / "fast_math_ties.cpp"), "-o", str(binary),
            "-lglog", "-lprotobuf",
        ]
    )  # fmt: skip
    assert build.returncode == 0, "the fast-math harness did not compile (output above)"
    proc = run([str(binary)])
    match = re.search(r"cases (\d+) wrong (\d+) plain_division_wrong (\d+)", proc.stdout)
    assert match, proc.stdout
    cases, wrong, plain_wrong = map(int, match.groups())
    assert wrong == 0, f"normalized() misjudged {wrong} of {cases} entries as (not) maxima"
    assert plain_wrong > 0, "-ffast-math left the division exact: the test proves nothing here"
    assert proc.returncode == 0
