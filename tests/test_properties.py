"""Property-based tests (hypothesis): option validation never crashes and never lets a
bad value through; the IRG layers' shape checks refuse exactly the mismatched bottoms."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("caffe")
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from pyirg.experiment import ExperimentConfig  # noqa: E402
from pyirg.gen import main as gen_main  # noqa: E402

numbers = st.one_of(
    st.integers(-3, 1000),
    st.floats(allow_nan=True, allow_infinity=True, width=32),
)


@settings(max_examples=200, deadline=None)
@given(
    batch=st.integers(-2, 300),
    max_iter=st.integers(-2, 50),
    train_per_class=st.integers(-2, 400),
    jobs=st.integers(-2, 8),
    edge=numbers,
    lr=numbers,
)
def test_main_options_are_either_valid_or_refused(
    batch, max_iter, train_per_class, jobs, edge, lr
) -> None:
    try:
        cfg = ExperimentConfig(
            batch=batch,
            max_iter=max_iter,
            train_per_class=train_per_class,
            jobs=jobs,
            edge_weight=float(edge),
            base_lr=float(lr),
        )
    except ValueError as e:
        assert str(e)  # refused with a message (never another exception type)
        return
    assert cfg.batch >= 2 and cfg.max_iter >= 4 and cfg.jobs >= 0
    assert 1 <= cfg.train_per_class <= 173
    assert math.isfinite(cfg.edge_weight) and cfg.edge_weight >= 0
    assert math.isfinite(cfg.base_lr) and cfg.base_lr >= 0


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    method=st.sampled_from(["baseline", "logits", "IRG", "IRG-t", "MTK"]),
    width=st.sampled_from(["0.25", "0.5", "0", "-1", "nan", "inf"]),
    weight=st.sampled_from([None, "0.005", "0", "-0.1", "nan", "inf"]),
    classes=st.sampled_from([None, "10", "0", "-5"]),
    batch=st.sampled_from([None, "64", "0"]),
)
def test_gen_writes_a_net_or_refuses_in_one_line(
    method, width, weight, classes, batch, capsys
) -> None:
    argv = ["--method", method, "--student-depth", "14", "--student-width", width]
    if weight is not None:
        argv += ["--edge-weight", weight]
    if classes is not None:
        argv += ["--num-classes", classes]
    if batch is not None:
        argv += ["--train-batch", batch]
    valid = (
        float(width) > 0
        and math.isfinite(float(width))
        and (weight is None or (method in ("IRG", "MTK") and float(weight) >= 0 and
                                math.isfinite(float(weight))))
        and (classes is None or int(classes) >= 1)
        and (batch is None or int(batch) >= 1)
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as out:
        try:
            code = gen_main(["--out", out, *argv])
        except SystemExit as e:
            code = e.code
        written = os.listdir(out)
    err = capsys.readouterr().err
    if valid:
        assert code == 0 and written, err
    else:
        assert code == 2 and not written
        assert len(err.strip().splitlines()) == 1 and "error:" in err


_VECTOR = r"""
import sys
import caffe
n1, d1, n2, d2 = map(int, sys.argv[1:])
text = f'''
layer {{ name: "x" type: "Input" top: "x" input_param {{ shape {{ dim: {n1} dim: {d1} }} }} }}
layer {{ name: "y" type: "Input" top: "y" input_param {{ shape {{ dim: {n2} dim: {d2} }} }} }}
layer {{ name: "bev" type: "BatchEuclideanVector" bottom: "x" bottom: "y" top: "v" }}
'''
import tempfile
with tempfile.NamedTemporaryFile("w", suffix=".prototxt") as f:
    f.write(text)
    f.flush()
    net = caffe.Net(f.name, caffe.TEST)
net.forward()
print("ok", net.blobs["v"].data.shape)
"""


@settings(max_examples=8, deadline=None)
@given(n1=st.integers(1, 6), d1=st.integers(1, 5), n2=st.integers(1, 6), d2=st.integers(1, 5))
def test_vector_layer_refuses_exactly_mismatched_bottoms(n1, d1, n2, d2) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _VECTOR, *map(str, (n1, d1, n2, d2))],
        capture_output=True,
        text=True,
        env=dict(os.environ, GLOG_minloglevel="0"),
        cwd=Path(__file__).parent,
    )
    if (n1, d1) == (n2, d2):
        assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-2000:]
        return
    assert proc.returncode != 0
    failure = next(line for line in proc.stderr.splitlines() if "Check failed" in line)
    assert "BatchEuclideanVector" in failure and "'bev'" in failure
    assert f"{n1} {d1}" in failure and f"{n2} {d2}" in failure  # both shapes named
