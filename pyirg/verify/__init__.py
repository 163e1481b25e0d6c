"""Check the Caffe IRG layers and the generated distillation nets against the PyTorch reference.

``python tools/verify.py [--full] [--json OUT] [--no-nets] [--seed S]``

Why three implementations: the Caffe layers (GEMM formulation, C++), the PyTorch reference
(direct pairwise differences, autograd for the exact gradient, a custom Function for the
released one) and a NumPy float64 implementation written here from the formulas, with the
exact gradient derived by hand (chain rule through the normalizer ``m``). Agreement of
independently written code is the evidence; any pair disagreeing is a FAIL.

The package, one concern per module:

- :mod:`~pyirg.verify.modes`: the ``irg_param`` settings compared.
- :mod:`~pyirg.verify.rows`: report rows, tolerances and the error measures.
- :mod:`~pyirg.verify.cases`: the ordinary and hard inputs.
- :mod:`~pyirg.verify.numpy_ref`: the NumPy float64 reference.
- :mod:`~pyirg.verify.backends`: running the PyTorch reference and the Caffe layers.
- :mod:`~pyirg.verify.layer_checks`: per-layer comparisons, tie-agnostic check, plan.
- :mod:`~pyirg.verify.net_checks`: whole distillation nets, pycaffe vs PyTorch.
- :mod:`~pyirg.verify.report`: the table and the JSON report.
- :mod:`~pyirg.verify.cli`: ``main(argv)``, quick and full mode, exit status.

Everything is re-exported here, so ``pyirg.verify.X`` keeps naming what it always did.
"""

from __future__ import annotations

from pyirg.verify.backends import caffe_layer, layer_net, load_net, torch_layer
from pyirg.verify.cases import CASE_NAMES, Case, map_cases, vector_cases
from pyirg.verify.cli import main, parse_args
from pyirg.verify.layer_checks import (
    QUICK_CASES,
    QUICK_HARD_MODES,
    TIE_WEIGHT_SLACK,
    check_layer,
    check_layers,
    layer_plan,
    tie_agnostic,
)
from pyirg.verify.modes import (
    ALL_MODES,
    BACKWARD,
    DEFAULT_MODE,
    LAYERS,
    NORMALIZE,
    SQUARED,
    Mode,
)
from pyirg.verify.net_checks import (
    NET_BATCH,
    NET_METHODS,
    NET_STUDENT,
    NET_TEACHER,
    TERMS,
    NetCase,
    caffe_net_run,
    check_net,
    check_nets,
    distill_config,
    loss_terms,
    net_plan,
    randomize_params,
)
from pyirg.verify.numpy_ref import Reference, numpy_map, numpy_vector
from pyirg.verify.report import format_table, write_json
from pyirg.verify.rows import (
    CAFFE_ROW,
    DOUBLE_TOL,
    EPS32,
    FLOAT_TOL,
    NUMPY_ROW,
    TINY,
    Row,
    errors,
    flatten,
    make_row,
)

__all__ = [
    "ALL_MODES",
    "BACKWARD",
    "CAFFE_ROW",
    "CASE_NAMES",
    "DEFAULT_MODE",
    "DOUBLE_TOL",
    "EPS32",
    "FLOAT_TOL",
    "LAYERS",
    "NET_BATCH",
    "NET_METHODS",
    "NET_STUDENT",
    "NET_TEACHER",
    "NORMALIZE",
    "NUMPY_ROW",
    "QUICK_CASES",
    "QUICK_HARD_MODES",
    "SQUARED",
    "TERMS",
    "TIE_WEIGHT_SLACK",
    "TINY",
    "Case",
    "Mode",
    "NetCase",
    "Reference",
    "Row",
    "caffe_layer",
    "caffe_net_run",
    "check_layer",
    "check_layers",
    "check_net",
    "check_nets",
    "distill_config",
    "errors",
    "flatten",
    "format_table",
    "layer_net",
    "layer_plan",
    "load_net",
    "loss_terms",
    "main",
    "make_row",
    "map_cases",
    "net_plan",
    "numpy_map",
    "numpy_vector",
    "parse_args",
    "randomize_params",
    "tie_agnostic",
    "torch_layer",
    "vector_cases",
    "write_json",
]
