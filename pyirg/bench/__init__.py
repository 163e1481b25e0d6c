"""Benchmark of the IRG layers: our Caffe layers against PyTorch, the GEMM bound, and training.

Why this exists: the layers' reason to be (README, "How they compute") is that one GEMM
per pass replaces the authors' N^2 per-pair loop. That claim is only worth something if
it is measured the way a user meets it: a whole pycaffe net's forward + backward, next
to what a competent PyTorch user would write, next to the BLAS time the algorithm
cannot avoid, and as a share of a real distillation iteration. Everything runs in one
process, implementations interleaved per repetition, because the machines we have are
small and shared: a median with its spread from side-by-side samples is comparable,
two runs minutes apart are not.

What is timed (float, CPU):

- ``caffe``: ``net.forward(); net.backward()`` of Input -> layer -> EuclideanLoss against
  a fixed Input target, ``force_backward`` on (the public pycaffe API, so Python's call
  overhead counts as it does for a user);
- ``torch_gram`` / ``torch_cdist`` (map) and ``torch`` (vector): autograd of the same
  forward and loss (``mse_loss(sum) / 2num``, Caffe's EuclideanLoss scaling) with as many
  threads as Caffe's OpenBLAS; the map's "PyTorch" is the faster of the two forms;
- the bound, through the very OpenBLAS that libcaffe links (``cblas_*`` by ctypes): for
  the map the two GEMMs of the algorithm (forward ``X X^T``, backward ``S X``), for the
  vector the bytes it must move (``sdot(x, y)`` forward, ``scopy`` into both diffs
  backward), since it has no GEMM;
- a breakdown of the Caffe net by layer (``net._forward(i, i)`` / ``net._backward(i, i)``)
  the two GEMMs alone, and the three GEMMs PyTorch's Gram form runs (MKL), so a missed
  target can be attributed to BLAS or to the rest;
- training: ``solver.step(1)`` of the paper's IRG, IRG-t and MTK nets (pyirg.distill,
  Input-fed synthetic data) against the same nets stripped of their IRG layers, plus the
  IRG layers' own per-layer time, which resolves far below the noise of end-to-end
  differences on a shared machine.

The code is split by concern: ``config`` (sizes, ``Settings``), ``timing``
(``measure``), ``blas`` (the bound), ``layers`` (nets, PyTorch versions, the sweep),
``memory``, ``training``, ``targets``, ``machine``, ``console`` and ``report`` (outputs),
``cli`` (``main``); every public name is re-exported here.

Run ``python tools/bench.py [--quick] [--out DIR] [--threads N]``: prints the tables and
writes ``bench.json`` (all raw samples, machine, versions), ``bench.md`` (the tables of
docs/benchmarks.md) and ``bench.png``. Results: docs/benchmarks.md.
"""

from __future__ import annotations

from pyirg.bench.blas import OpenBLAS, find_caffe_openblas
from pyirg.bench.cli import main, parse, settings
from pyirg.bench.config import FULL_C, FULL_N, QUICK_C, QUICK_N, SETTLE_S, TRAIN_METHODS, Settings
from pyirg.bench.console import (
    print_memory,
    print_profile,
    print_tables,
    print_targets,
    print_training,
)
from pyirg.bench.layers import (
    NetFiles,
    bench_layer,
    layer_net_text,
    ratios,
    target_map,
    torch_best,
    torch_gemms,
    torch_map,
    torch_vector,
)
from pyirg.bench.machine import machine_info
from pyirg.bench.memory import FLOAT, layer_extra_bytes, observed_extra_bytes
from pyirg.bench.report import markdown, plot, to_json
from pyirg.bench.targets import TARGETS, TRAIN_TARGET_PCT, Target, evaluate_targets
from pyirg.bench.timing import MAX_INNER, Timing, measure
from pyirg.bench.training import HELPER_TYPES, IRG_TYPES, bench_training, distill_nets, strip_irg

__all__ = [
    "FLOAT",
    "FULL_C",
    "FULL_N",
    "HELPER_TYPES",
    "IRG_TYPES",
    "MAX_INNER",
    "NetFiles",
    "OpenBLAS",
    "QUICK_C",
    "QUICK_N",
    "SETTLE_S",
    "Settings",
    "TARGETS",
    "TRAIN_METHODS",
    "TRAIN_TARGET_PCT",
    "Target",
    "Timing",
    "bench_layer",
    "bench_training",
    "distill_nets",
    "evaluate_targets",
    "find_caffe_openblas",
    "layer_extra_bytes",
    "layer_net_text",
    "machine_info",
    "main",
    "markdown",
    "measure",
    "observed_extra_bytes",
    "parse",
    "plot",
    "print_memory",
    "print_profile",
    "print_tables",
    "print_targets",
    "print_training",
    "ratios",
    "settings",
    "strip_irg",
    "target_map",
    "to_json",
    "torch_best",
    "torch_gemms",
    "torch_map",
    "torch_vector",
]
