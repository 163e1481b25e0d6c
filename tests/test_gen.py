"""Tests of ``gen`` (pyirg.gen): the committed prototxt/ is its output, and its command
line writes a net or refuses in one line.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

os.environ.setdefault("GLOG_minloglevel", "2")
caffe = pytest.importorskip("caffe")

from pyirg.gen import main as gen_main  # noqa: E402
from pyirg.gen import reference_files  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def test_committed_prototxt_is_generated_output(tmp_path: Path) -> None:
    assert gen_main(["--out", str(tmp_path), "--net-dir", "prototxt"]) == 0
    names = sorted(reference_files())
    assert sorted(p.name for p in tmp_path.iterdir()) == names
    stale = [n for n in names if (REPO / "prototxt" / n).read_text() != (tmp_path / n).read_text()]
    assert not stale, f"prototxt/ is stale, run python tools/gen_prototxt.py: {stale}"


def _run_gen(args: list[str]) -> Iterator[str]:
    with tempfile.TemporaryDirectory() as out:
        assert gen_main(["--out", out, *args]) == 0
        yield from sorted(os.listdir(out))


def test_gen_cli_other_pairs_and_errors(capsys: pytest.CaptureFixture[str]) -> None:
    files = list(_run_gen(["--method", "MTK", "--student-depth", "14"]))
    assert files == [
        "MTK_ResNet-20_to_ResNet-14-x0.5.prototxt",
        "deploy_MTK_ResNet-20_to_ResNet-14-x0.5.prototxt",
        "solver_MTK_ResNet-20_to_ResNet-14-x0.5.prototxt",
    ]
    assert list(_run_gen(["--method", "IRG", "--student-width", "0.375"]))[0] == (
        "IRG_ResNet-20_to_ResNet-20-x0.375.prototxt"
    )
    with pytest.raises(SystemExit) as exc:
        gen_main(["--student-depth", "14"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        gen_main(["--method", "IRG-t", "--student-depth", "8", "--out", "/nonexistent/x"])
    assert "one block in stage 1" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--method", "baseline", "--edge-weight", "0.1"], "--edge-weight: not used by"),
        (["--method", "IRG-t", "--edge-layers", "Eltwise3"], "--edge-layers: not used by"),
        (["--method", "IRG", "--transform-pool", "Reduction"], "--transform-pool: not used"),
        (["--method", "logits", "--normalize", "MEAN"], "--normalize: not used by"),
        (["--method", "baseline", "--teacher-depth", "32"], "--teacher-depth: not used by"),
        (["--method", "IRG", "--num-classes", "0"], "--num-classes must be >= 1"),
        (["--method", "IRG", "--train-batch", "0"], "--train-batch must be >= 1"),
        (["--method", "MTK", "--student-width", "nan"], "--student-width must be a positive"),
        (["--method", "MTK", "--teacher-width", "-1"], "--teacher-width must be a positive"),
        (["--method", "IRG", "--logits-weight", "inf"], "--logits-weight must be a finite"),
        (["--method", "IRG", "--edge-weight", "-0.1"], "--edge-weight must be a finite"),
        # a net pyirg check would refuse is not written
        (["--method", "IRG", "--train-batch", "1"], "would not train: ERROR irg-batch-1"),
        (["--method", "IRG-t", "--train-batch", "1"], "would not train: ERROR irg-batch-1"),
        # the data set's lr steps past --max-iter: the fix is named
        (["--method", "IRG", "--dataset", "digits", "--max-iter", "40"], "--stepvalues 20 30"),
        (["--method", "baseline", "--max-iter", "1000"], "give --stepvalues too"),
        (["--method", "IRG", "--dataset", "digits", "--max-iter", "1"], "give --stepvalues too"),
    ],
)
def test_gen_refuses_instead_of_ignoring(argv, message, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        gen_main(["--out", str(tmp_path), *argv])
    assert info.value.code == 2 and message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing written


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


def test_a_small_test_split_is_tested_in_one_batch(tmp_path: Path, capsys) -> None:
    """digits' 797 test images (a prime): batches of 100 would count 3 of them twice, so a
    split of at most 1,000 images is one test batch; CIFAR's 10,000 stay in batches of 100."""
    from caffe.proto import caffe_pb2
    from google.protobuf import text_format

    def generated(*argv: str) -> tuple[int, int]:
        out = tmp_path / "_".join(argv)
        assert gen_main(["--out", str(out), "--method", "baseline", *argv]) == 0
        solver, net = sorted(out.glob("solver_*")), sorted(out.glob("baseline_*"))
        s = text_format.Merge(solver[0].read_text(), caffe_pb2.SolverParameter())
        n = text_format.Merge(net[0].read_text(), caffe_pb2.NetParameter())
        test = next(x for x in n.layer if x.type == "Data" and x.include[0].phase == 1)
        return s.test_iter[0], test.data_param.batch_size

    assert generated("--dataset", "digits") == (1, 797)
    assert generated("--dataset", "cifar10") == (100, 100)
    assert generated("--dataset", "digits", "--test-batch", "100") == (8, 100)
    capsys.readouterr()
