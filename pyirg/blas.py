"""Which OpenBLAS kernel Caffe runs on: chosen from the CPU's own feature flags.

Why: libcaffe links the system OpenBLAS (Debian 12: 0.3.21), which picks its kernels
once, when the library loads, from the CPU *model*. A model newer than the library
(an Intel Xeon with AVX-512 and FP16, for instance) is unknown to it and falls back to
the Prescott (SSE3) kernels: GEMMs, and so Caffe's convolutions, run 2.5-6x slower.
``OPENBLAS_CORETYPE`` overrides that choice, so the best kernel is chosen here from the
instruction sets the CPU reports (``/proc/cpuinfo`` flags, which Linux clears for
features the OS has not enabled), never one it lacks, and set before libcaffe loads.

A value the user (or the machine) already set is left alone: some machines set it
because other kernels misbehave there. Importing :mod:`pyirg` applies the choice, so
every ``pyirg`` command, test and benchmark gets it; ``tools/env.sh`` exports it for
the ``caffe`` tool (:func:`export_line`). The variable only matters to
libraries loaded after it is set; numpy's, scipy's and torch's own BLAS copies are
separate libraries that pyirg does not load through Caffe.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterable, MutableMapping
from pathlib import Path
from typing import Any

CORETYPE_ENV = "OPENBLAS_CORETYPE"
#: Set beside OPENBLAS_CORETYPE when pyirg chose it, so reports can say where it came from.
SOURCE_ENV = "PYIRG_CORETYPE_SOURCE"
CPU_FLAGS_SOURCE = "cpu-flags"

_AVX512 = frozenset({"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"})
#: OpenBLAS 0.3.21 kernel tiers, best first: (core name, flags it needs, vendor or None).
#: Cooperlake is SkylakeX plus bfloat16 (what OpenBLAS itself picks for a known CPU with
#: AVX512_BF16, e.g. AMD Zen 4); Zen is the Haswell kernels with AMD's blocking sizes.
KERNEL_TIERS: tuple[tuple[str, frozenset[str], str | None], ...] = (
    ("Cooperlake", _AVX512 | {"avx512_bf16"}, None),
    ("SkylakeX", _AVX512, None),
    ("Zen", frozenset({"avx2", "fma"}), "AuthenticAMD"),
    ("Haswell", frozenset({"avx2", "fma"}), None),
    ("Sandybridge", frozenset({"avx"}), None),
    ("Nehalem", frozenset({"sse4_2"}), None),
    ("Core2", frozenset({"ssse3"}), None),
    ("Prescott", frozenset({"pni"}), None),  # pni: SSE3
)


def read_cpuinfo(path: str | Path = "/proc/cpuinfo") -> tuple[str, str, frozenset[str]]:
    """(vendor, model name, flags) of the first CPU; empty values where unreadable."""
    vendor, model, flags = "", "", frozenset()
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return vendor, model, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "vendor_id" and not vendor:
            vendor = value.strip()
        elif key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = frozenset(value.split())
        if not line.strip() and flags:  # the first CPU's block is complete
            break
    return vendor, model, flags


def best_coretype(flags: Iterable[str], vendor: str = "") -> str:
    """The best OpenBLAS 0.3.21 kernel whose instructions are all among ``flags``.

    "" when none fits (a CPU without SSE3): then OpenBLAS is left to decide.
    """
    have = frozenset(flags)
    for name, needs, only_vendor in KERNEL_TIERS:
        if needs <= have and (only_vendor is None or only_vendor == vendor):
            return name
    return ""


def ensure_coretype(environ: MutableMapping[str, str] | None = None) -> str:
    """Set ``OPENBLAS_CORETYPE`` from the CPU flags unless it is set; return the value in force.

    Only x86-64 Linux has these kernels; elsewhere nothing is set and "" is returned.
    """
    env = os.environ if environ is None else environ
    if env.get(CORETYPE_ENV):
        return env[CORETYPE_ENV]
    vendor, _, flags = read_cpuinfo()
    if not flags or not ({"sse2", "lm"} <= flags):  # not an x86-64 CPU (or no /proc)
        return ""
    chosen = best_coretype(flags, vendor)
    if chosen:
        env[CORETYPE_ENV] = chosen
        env[SOURCE_ENV] = _marker(chosen)
    return chosen


def _marker(value: str) -> str:
    """The source marker names the value chosen, so a value changed later is not ours."""
    return f"{CPU_FLAGS_SOURCE}:{value}"


def _chosen_by_pyirg(env: MutableMapping[str, str]) -> bool:
    return bool(env.get(CORETYPE_ENV)) and env.get(SOURCE_ENV) == _marker(env[CORETYPE_ENV])


def coretype_source(environ: MutableMapping[str, str] | None = None) -> str:
    """Where OPENBLAS_CORETYPE came from: chosen by pyirg, set by the user, or unset."""
    env = os.environ if environ is None else environ
    if not env.get(CORETYPE_ENV):
        return "unset (OpenBLAS detects the CPU itself)"
    if _chosen_by_pyirg(env):
        return "chosen by pyirg from the CPU flags"
    return "set in the environment (left alone)"


def libcaffe_dependencies() -> str | None:
    """``ldd`` of the libcaffe this process loaded (importing pycaffe if needed), or None
    when libcaffe is not a separate library (linked statically) or ldd is missing."""
    import caffe  # noqa: F401  (loads libcaffe and what it links)

    with open("/proc/self/maps") as f:
        libcaffe = next((line.split()[-1] for line in f if "/libcaffe" in line), None)
    if libcaffe is None:
        return None
    try:
        return subprocess.run(["ldd", libcaffe], capture_output=True, text=True).stdout
    except OSError:
        return None


def caffe_blas_path() -> str | None:
    """The BLAS library libcaffe itself links (resolved), or None if it cannot be found.

    Found from libcaffe's own dependencies, so that numpy's or scipy's bundled copies
    (also loaded, also OpenBLAS) are never mistaken for it.
    """
    out = libcaffe_dependencies()
    if out is None:
        return None
    # libopenblas first: libcaffe names it directly; a libblas line may come from elsewhere.
    for pattern in (
        r"libopenblas[^\s]*\s*=>\s*(\S+)",
        r"lib(?:mkl_rt|cblas|blas)[^\s]*\s*=>\s*(\S+)",
    ):
        match = re.search(pattern, out)
        if match:
            return os.path.realpath(match.group(1))
    return None


def caffe_openblas() -> dict[str, Any] | None:
    """threadpoolctl's record of libcaffe's OpenBLAS (path, version, kernel, threads).

    None when libcaffe's BLAS is not an OpenBLAS that threadpoolctl knows (ATLAS, MKL).
    """
    from threadpoolctl import threadpool_info

    path = caffe_blas_path()
    for info in threadpool_info():
        if path and os.path.realpath(info["filepath"]) == path:
            return info if info.get("internal_api") == "openblas" else None
    return None


def kernel_line() -> str:
    """One line for reports: CPU, Caffe's OpenBLAS version, kernel in use, threads, its source."""
    info = caffe_openblas()
    _, model, _ = read_cpuinfo()
    if info is None:
        return f"CPU {model or 'unknown'}; Caffe's BLAS is not OpenBLAS ({caffe_blas_path()})"
    return (
        f"CPU {model or 'unknown'}; OpenBLAS {info.get('version')} kernel "
        f"{info.get('architecture')} x{info.get('num_threads')} threads "
        f"(OPENBLAS_CORETYPE {coretype_source()})"
    )


def export_line() -> str:
    """Shell ``export`` of the kernel for tools/env.sh; "" when the user set the variable."""
    if os.environ.get(CORETYPE_ENV) and not _chosen_by_pyirg(os.environ):
        return ""
    value = ensure_coretype()
    return f"export {CORETYPE_ENV}={value} {SOURCE_ENV}={_marker(value)}" if value else ""
