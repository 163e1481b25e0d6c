"""The IRG Caffe layers seen from pycaffe: their shape checks refuse exactly the
mismatched bottoms, naming the layer and both shapes (property-based, hypothesis)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("caffe")
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

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


@pytest.mark.slow
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
