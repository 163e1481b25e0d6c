"""The OpenBLAS kernel Caffe runs on: chosen from the CPU flags, reported, and correct."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from conftest import REPO, run

from pyirg.blas import (
    CORETYPE_ENV,
    SOURCE_ENV,
    best_coretype,
    coretype_source,
    ensure_coretype,
    export_line,
    read_cpuinfo,
)

SSE = {"sse", "sse2", "pni", "ssse3", "sse4_1", "sse4_2", "lm"}
AVX2 = SSE | {"avx", "avx2", "fma", "f16c"}
AVX512 = AVX2 | {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"}


@pytest.mark.parametrize(
    ("flags", "vendor", "kernel"),
    [
        (AVX512 | {"avx512_bf16", "avx512_fp16"}, "GenuineIntel", "Cooperlake"),
        (AVX512 | {"avx512_bf16"}, "AuthenticAMD", "Cooperlake"),
        (AVX512, "GenuineIntel", "SkylakeX"),
        (AVX512 - {"avx512vl"}, "GenuineIntel", "Haswell"),  # not the full Skylake-X set
        (AVX2, "GenuineIntel", "Haswell"),
        (AVX2, "AuthenticAMD", "Zen"),
        (AVX2 - {"fma"}, "GenuineIntel", "Sandybridge"),
        (SSE | {"avx"}, "GenuineIntel", "Sandybridge"),
        (SSE, "GenuineIntel", "Nehalem"),
        (SSE - {"sse4_2"}, "GenuineIntel", "Core2"),
        ({"sse", "sse2", "pni", "lm"}, "GenuineIntel", "Prescott"),
        ({"sse", "sse2", "lm"}, "GenuineIntel", ""),  # no SSE3: OpenBLAS decides
    ],
)
def test_best_kernel_never_needs_a_missing_flag(flags: set, vendor: str, kernel: str) -> None:
    assert best_coretype(flags, vendor) == kernel


def test_avx2_cpu_is_never_given_prescott() -> None:
    for vendor in ("GenuineIntel", "AuthenticAMD", "HygonGenuine", ""):
        assert best_coretype(AVX2, vendor) not in ("Prescott", "Core2", "Nehalem")


def test_read_cpuinfo_takes_the_first_cpu(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Processor\n"
        "flags\t\t: fpu sse sse2 avx2 fma\n\nprocessor\t: 1\nvendor_id\t: Other\n"
        "flags\t\t: fpu\n"
    )
    vendor, model, flags = read_cpuinfo(info)
    assert (vendor, model) == ("GenuineIntel", "Intel(R) Xeon(R) Processor")
    assert flags == frozenset({"fpu", "sse", "sse2", "avx2", "fma"})
    assert read_cpuinfo(tmp_path / "missing") == ("", "", frozenset())


def test_a_value_set_by_the_user_is_left_alone() -> None:
    env = {CORETYPE_ENV: "Haswell"}
    assert ensure_coretype(env) == "Haswell"
    assert env == {CORETYPE_ENV: "Haswell"}
    assert "left alone" in coretype_source(env)


def test_unset_variable_is_chosen_from_this_cpu() -> None:
    env: dict[str, str] = {}
    value = ensure_coretype(env)
    vendor, _, flags = read_cpuinfo()
    if not flags:
        pytest.skip("no /proc/cpuinfo flags here")
    assert value == best_coretype(flags, vendor)
    assert env[SOURCE_ENV] and "chosen by pyirg" in coretype_source(env)


def test_export_line_for_env_sh_respects_a_user_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CORETYPE_ENV, "Sandybridge")
    monkeypatch.delenv(SOURCE_ENV, raising=False)
    assert export_line() == ""


def test_a_value_changed_after_pyirg_chose_is_the_users() -> None:
    env: dict[str, str] = {}
    if not ensure_coretype(env):
        pytest.skip("no x86-64 /proc/cpuinfo here")
    assert "chosen by pyirg" in coretype_source(env)
    env[CORETYPE_ENV] = "Nehalem"  # e.g. exported by the user after tools/env.sh
    assert "left alone" in coretype_source(env)
    assert ensure_coretype(env) == "Nehalem"


# -- through Caffe ------------------------------------------------------------------------

_PROBE = r"""
import json, os, sys
import numpy as np
import pyirg, caffe
from caffe import layers as L
from pyirg.blas import caffe_openblas

import tempfile
caffe.set_mode_cpu()
rng = np.random.default_rng(0)
err = 0.0
# InnerProduct's forward is X W^T (NT), its backward top^T X (TN) and top W (NN), all
# through caffe_cpu_gemm; a large product and the small ones of thin convolutions.
for m, n, k in [(300, 257, 129), (64, 4, 36), (16, 8, 72), (7, 16, 3)]:
    ns = caffe.NetSpec()
    ns.x = L.Input(shape=dict(dim=[m, k]))
    ns.y = L.InnerProduct(ns.x, num_output=n, bias_term=False, weight_filler=dict(type="gaussian"))
    with tempfile.NamedTemporaryFile("w", suffix=".prototxt", delete=False) as f:
        f.write("force_backward: true\n" + str(ns.to_proto()))
    net = caffe.Net(f.name, caffe.TRAIN)
    os.unlink(f.name)
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = rng.standard_normal((n, k)).astype(np.float32)
    g = rng.standard_normal((m, n)).astype(np.float32)
    net.blobs["x"].data[...] = x
    net.params["y"][0].data[...] = w
    net.params["y"][0].diff[...] = 0
    net.forward()
    net.blobs["y"].diff[...] = g
    net.backward()
    x64, w64, g64 = x.astype(np.float64), w.astype(np.float64), g.astype(np.float64)
    for got, want in ((net.blobs["y"].data, x64 @ w64.T), (net.params["y"][0].diff, g64.T @ x64),
                      (net.blobs["x"].diff, g64 @ w64)):
        err = max(err, float(np.abs(got - want).max() / np.abs(want).max()))
info = caffe_openblas()
print(json.dumps({"kernel": info["architecture"], "err": err,
                  "env": os.environ.get("OPENBLAS_CORETYPE")}))
"""


def _probe(env: dict[str, str]) -> dict:
    proc = run([sys.executable, "-c", _PROBE], cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_caffe_runs_the_chosen_kernel_and_its_gemm_matches_numpy() -> None:
    pytest.importorskip("caffe")
    env = dict(os.environ, GLOG_minloglevel="2")
    user_value = os.environ.get(CORETYPE_ENV) if not os.environ.get(SOURCE_ENV) else None
    if user_value is None:  # what pyirg chooses on a fresh shell, not what a parent set
        env.pop(CORETYPE_ENV, None)
        env.pop(SOURCE_ENV, None)
    got = _probe(env)
    vendor, _, flags = read_cpuinfo()
    expected = user_value or best_coretype(flags, vendor)
    assert got["env"] == expected
    assert got["kernel"].lower() == expected.lower(), f"OpenBLAS ignored {expected}: {got}"
    if user_value is None and {"avx2", "fma"} <= flags:
        assert got["kernel"] != "Prescott"
    # caffe_cpu_gemm (InnerProduct forward and backward) through that kernel matches numpy.
    assert got["err"] < 1e-5, got


def test_pyirg_version_reports_the_kernel() -> None:
    pytest.importorskip("caffe")
    proc = run([sys.executable, "-m", "pyirg", "--version"], cwd=REPO)
    assert proc.returncode == 0
    line = proc.stdout.strip()
    assert line.startswith("pyirg ") and "OpenBLAS" in line and " kernel " in line
    kernel = line.split(" kernel ")[1].split()[0]
    assert kernel not in ("None", "")


def test_caffe_honours_a_kernel_the_user_set() -> None:
    pytest.importorskip("caffe")
    vendor, _, flags = read_cpuinfo()
    if not {"avx2", "fma"} <= flags:
        pytest.skip("needs a CPU with AVX2 for the Haswell kernel")
    env = dict(os.environ, GLOG_minloglevel="2", **{CORETYPE_ENV: "Haswell"})
    env.pop(SOURCE_ENV, None)
    got = _probe(env)
    assert got["kernel"] == "Haswell" and got["err"] < 1e-5
