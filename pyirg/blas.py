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
from collections.abc import Iterable, MutableMapping
from pathlib import Path
from typing import Any

CORETYPE_ENV = "OPENBLAS_CORETYPE"
#: Set beside OPENBLAS_CORETYPE when pyirg chose it, so reports can say where it came from.
SOURCE_ENV = "PYIRG_CORETYPE_SOURCE"
CPU_FLAGS_SOURCE = "cpu-flags"

#: OpenBLAS 0.3.21 kernel tiers, best first: (core name, flags it needs, vendor or None).
#: Cooperlake is SkylakeX plus bfloat16 (what OpenBLAS itself picks for a known CPU with
#: AVX512_BF16, e.g. AMD Zen 4); Zen is the Haswell kernels with AMD's blocking sizes.
KERNEL_TIERS: tuple[tuple[str, frozenset[str], str | None], ...] = (
    (
        "Cooperlake",
        frozenset({"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl", "avx512_bf16"}),
        None,
    ),
    ("SkylakeX", frozenset({"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"}), None),
    ("Zen", frozenset({"avx2", "fma"}), "AuthenticAMD"),
    ("Haswell", frozenset({"avx2", "fma"}), None),
    ("Sandybridge", frozenset({"avx"}), None),
    ("Nehalem", frozenset({"sse4_2"}), None),
    ("Core2", frozenset({"ssse3"}), None),
    ("Prescott", frozenset(), None),
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
    """The best OpenBLAS 0.3.21 kernel whose instructions are all among ``flags``."""
    have = frozenset(flags)
    for name, needs, only_vendor in KERNEL_TIERS:
        if needs <= have and (only_vendor is None or only_vendor == vendor):
            return name
    return "Prescott"  # pragma: no cover - the last tier needs nothing


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
    env[CORETYPE_ENV] = best_coretype(flags, vendor)
    env[SOURCE_ENV] = CPU_FLAGS_SOURCE
    return env[CORETYPE_ENV]


def coretype_source(environ: MutableMapping[str, str] | None = None) -> str:
    """Where OPENBLAS_CORETYPE came from: chosen by pyirg, set by the user, or unset."""
    env = os.environ if environ is None else environ
    if not env.get(CORETYPE_ENV):
        return "unset (OpenBLAS detects the CPU itself)"
    if env.get(SOURCE_ENV) == CPU_FLAGS_SOURCE:
        return "chosen by pyirg from the CPU flags"
    return "set in the environment (left alone)"


def caffe_openblas() -> dict[str, Any]:
    """threadpoolctl's record of the OpenBLAS that libcaffe uses: path, version, kernel, threads.

    Caffe is imported here if it is not yet. numpy and scipy bundle their own OpenBLAS
    under ``site-packages``; libcaffe's is the system library, so that one is chosen.
    """
    import caffe  # noqa: F401  (loads libcaffe and its OpenBLAS)
    from threadpoolctl import threadpool_info

    candidates = [
        info
        for info in threadpool_info()
        if info.get("internal_api") == "openblas" and "site-packages" not in info["filepath"]
    ]
    if not candidates:
        raise RuntimeError("cannot find the OpenBLAS that libcaffe uses (threadpoolctl)")
    return candidates[0]


def kernel_line() -> str:
    """One line for reports: CPU, Caffe's OpenBLAS version, kernel in use, threads, its source."""
    info = caffe_openblas()
    _, model, _ = read_cpuinfo()
    return (
        f"CPU {model or 'unknown'}; OpenBLAS {info.get('version')} kernel "
        f"{info.get('architecture')} x{info.get('num_threads')} threads "
        f"(OPENBLAS_CORETYPE {coretype_source()})"
    )


def export_line() -> str:
    """Shell ``export`` of the kernel for tools/env.sh; "" when the user set the variable."""
    if os.environ.get(CORETYPE_ENV) and os.environ.get(SOURCE_ENV) != CPU_FLAGS_SOURCE:
        return ""
    value = ensure_coretype()
    return f"export {CORETYPE_ENV}={value} {SOURCE_ENV}={CPU_FLAGS_SOURCE}" if value else ""
