"""tools/verify.py: Caffe layers and distillation nets against the PyTorch reference.

Besides "it passes", these tests show that it can fail: a reference made wrong in one
setting must turn exactly those rows to FAIL, and the NumPy reference's hand-derived
gradient is checked against finite differences of its own forward.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("caffe")
from conftest import REPO, run, run_pyirg

import pyirg.torch.layers as torch_layers
import pyirg.torch.losses as torch_losses
import pyirg.torch.refilled as torch_refilled
from pyirg.verify import cli, report
from pyirg.verify import layer_compare as lc
from pyirg.verify import net_compare as nc
from pyirg.verify import refilled_compare as rc


def _report(tmp_path, *argv: str) -> tuple[int, list[dict]]:
    out = tmp_path / "report.json"
    code = cli.main([*argv, "--json", str(out)])
    return code, json.loads(out.read_text())["rows"]


def test_quick_mode_passes_and_covers_layers_modes_and_nets(tmp_path, capsys) -> None:
    code, rows = _report(tmp_path)
    printed = capsys.readouterr().out
    assert code == 0, printed[-3000:]
    assert all(r["passed"] for r in rows)
    for layer in lc.LAYERS:
        modes = {r["mode"] for r in rows if r["layer"] == layer}
        assert modes == {m.label for m in lc.ALL_MODES}
        cases = {r["case"] for r in rows if r["layer"] == layer}
        assert {"near_tie", "exact_tie", "identical", "offset", "n2", "4d"} <= cases
    for layer, modes in rc.LAYER_MODES.items():
        cells = {(r["mode"], r["case"]) for r in rows if r["layer"] == layer}
        assert cells == {(m, c) for m in modes for c in rc.CASE_NAMES[layer]}
    assert {r["dtype"] for r in rows} == {report.CAFFE_ROW, report.NUMPY_ROW}
    nets = {r["layer"].split()[1] for r in rows if r["layer"].startswith("net ")}
    assert nets == {"IRG", "IRG-t", "MTK"}
    terms = {(r["layer"].split()[1], r["case"]) for r in rows if r["layer"].startswith("net ")}
    assert {("IRG", "edges"), ("IRG-t", "transform"), ("MTK", "logits"), ("MTK", "total")} <= terms
    assert "PASS" in printed.splitlines()[-1]


def test_a_wrong_forward_in_one_mode_is_caught(tmp_path, monkeypatch) -> None:
    original = torch_layers.batch_euclidean_map

    def wrong(x, normalize="MAX", squared=True, backward="EXACT"):
        out = original(x, normalize, squared, backward)
        return out * 1.001 if normalize == "MEAN" else out

    monkeypatch.setattr(torch_layers, "batch_euclidean_map", wrong)
    code, rows = _report(tmp_path, "--no-nets")
    assert code == 1
    failed = {(r["layer"], r["mode"].split("/")[0]) for r in rows if not r["passed"]}
    assert failed == {("BatchEuclideanMap", "MEAN")}
    bad = [r for r in rows if not r["passed"]]
    # Both the Caffe and the NumPy rows see it, and only where the output is nonzero.
    assert {r["dtype"] for r in bad} == {report.CAFFE_ROW, report.NUMPY_ROW}
    assert all(r["fwd_rel"] > 1e-4 for r in bad)


def test_a_wrong_gradient_with_the_right_forward_is_caught(tmp_path, monkeypatch) -> None:
    original = torch_layers.batch_euclidean_vector

    def exact_instead_of_released(x, y, normalize="MAX", squared=True, backward="EXACT"):
        return original(x, y, normalize, squared, "EXACT")

    monkeypatch.setattr(torch_layers, "batch_euclidean_vector", exact_instead_of_released)
    code, rows = _report(tmp_path, "--no-nets")
    assert code == 1
    bad = [r for r in rows if not r["passed"]]
    assert {(r["layer"], r["mode"].split("/")[2]) for r in bad} == {
        ("BatchEuclideanVector", "RELEASED")
    }
    assert all(r["fwd_rel"] <= 1e-4 and r["bwd_rel"] > 1e-4 for r in bad)
    # With NONE the released backward is exact, so those rows must still pass.
    assert all(r["mode"].split("/")[0] != "NONE" for r in bad)


def test_a_wrong_irg_term_in_the_whole_net_is_caught(monkeypatch) -> None:
    original = torch_losses.batch_euclidean_map

    def released(x, normalize="MAX", squared=True, backward="EXACT"):
        return original(x, normalize, squared, "RELEASED")

    monkeypatch.setattr(torch_losses, "batch_euclidean_map", released)
    rows = nc.compare_net(nc.NetCase("IRG"), np.random.default_rng(0))
    by_term = {r.case: r for r in rows}
    assert by_term["edges"].fwd_rel <= 1e-4  # same loss value...
    assert not by_term["edges"].passed  # ...different student gradients
    assert by_term["gt"].passed and by_term["logits"].passed


def test_a_wrong_pair_on_the_caffe_side_is_caught(monkeypatch) -> None:
    """The PyTorch side chooses its own IRG-t pairs, so a wrong pyirg.distill choice fails."""
    import pyirg.distill as distill

    original = distill.stage_pairs

    def wrong(spec):  # the student's stage-1 and stage-2 pairs swapped
        pairs = original(spec)
        student = spec.width == nc.NET_STUDENT[1]
        return (pairs[1], pairs[0], *pairs[2:]) if student else pairs

    monkeypatch.setattr(distill, "stage_pairs", wrong)
    rows = nc.compare_net(nc.NetCase("IRG-t"), np.random.default_rng(0))
    by_term = {r.case: r for r in rows}
    assert not by_term["transform"].passed and not by_term["total"].passed
    assert by_term["gt"].passed


def test_a_wrong_architecture_on_the_caffe_side_is_caught(monkeypatch) -> None:
    """The PyTorch nets come from the reference's own description, not from pyirg.arch."""
    import pyirg.arch as arch

    monkeypatch.setattr(arch, "STAGE_WIDTHS", (16, 32, 48))
    with pytest.raises(ValueError, match="does not match the model's"):
        nc.compare_net(nc.NetCase("IRG"), np.random.default_rng(0))


@pytest.mark.parametrize("layer", lc.LAYERS)
@pytest.mark.parametrize(
    "mode", [m for m in lc.ALL_MODES if m.backward == "EXACT"], ids=lambda m: m.label
)
def test_numpy_gradient_matches_finite_differences(layer: str, mode: lc.Mode) -> None:
    """The hand-derived NumPy gradient is the derivative of the NumPy forward."""
    rng = np.random.default_rng(7)
    x, y = rng.standard_normal((5, 3)), rng.standard_normal((5, 3))
    g = rng.standard_normal((5, 5) if layer == "BatchEuclideanMap" else 5)

    def reference(x: np.ndarray, y: np.ndarray) -> lc.Reference:
        if layer == "BatchEuclideanMap":
            return lc.numpy_map(x, g, mode)
        return lc.numpy_vector(x, y, g, mode)

    def loss(x: np.ndarray, y: np.ndarray) -> float:
        return float((reference(x, y).top * g).sum())

    ref, h = reference(x, y), 1e-6
    for which in range(len(ref.grads)):
        numeric = np.zeros_like(ref.grads[which])
        for idx in np.ndindex(numeric.shape):
            plus, minus = [x.copy(), y.copy()], [x.copy(), y.copy()]
            plus[which][idx] += h
            minus[which][idx] -= h
            numeric[idx] = (loss(*plus) - loss(*minus)) / (2 * h)
        assert np.abs(ref.grads[which] - numeric).max() < 1e-6 * max(1, np.abs(numeric).max())


def test_numpy_map_forward_by_hand() -> None:
    x = np.array([[0.0], [1.0], [3.0]])
    out = lc.numpy_map(x, np.zeros((3, 3)), lc.Mode("MAX", True, "EXACT")).top
    assert np.allclose(out, np.array([[0, 1, 9], [1, 0, 4], [9, 4, 0]]) / 9)
    out = lc.numpy_map(x, np.zeros((3, 3)), lc.Mode("MEAN", False, "EXACT")).top
    assert np.allclose(out, np.array([[0, 1, 3], [1, 0, 2], [3, 2, 0]]) / 2)


def test_tie_agnostic_check_accepts_convex_splits_only() -> None:
    rng = np.random.default_rng(0)
    case = {c.name: c for c in lc.map_cases(rng)}["exact_tie"]
    x = case.bottoms[0].astype(np.float64)
    g = rng.standard_normal((x.shape[0],) * 2)
    ref = lc.numpy_map(x, g, lc.Mode())
    assert len(ref.ties) == 2
    grad = np.concatenate([a.ravel() for a in ref.grads])
    for w in (0.0, 0.3, 1.0, 1.7):
        fake = ref.const + w * ref.ties[0] + (1 - w) * ref.ties[1]
        err, rel, weights = lc.tie_agnostic(fake, ref, grad)
        assert rel < 1e-9 and np.allclose(weights, [w, 1 - w])
    # Not of that form at all: a large residual.
    _, rel, _ = lc.tie_agnostic(ref.const * 1.01, ref, grad)
    assert rel > 1e-4


def test_command_line_wrapper(tmp_path) -> None:
    out = tmp_path / "v.json"
    proc = run(
        [sys.executable, str(REPO / "tools/verify.py"), "--no-nets", "--json", str(out)],
        cwd=tmp_path,
    )
    assert proc.returncode == 0
    assert "caffe-f32 vs torch-f64" in proc.stdout and json.loads(out.read_text())["passed"]


def test_verify_checks_its_json_path_first(tmp_path: Path) -> None:
    proc = run_pyirg("verify", "--no-nets", "--json", str(tmp_path))
    assert proc.returncode == 2 and "--json" in proc.stderr and "Traceback" not in proc.stderr


def test_verify_refuses_a_negative_seed_in_one_line() -> None:
    proc = run_pyirg("verify", "--no-nets", "--seed", "-1")
    assert proc.returncode == 2 and "--seed" in proc.stderr and "Traceback" not in proc.stderr


# ------------------------------------------------------------------ REFILLED layers


def _refilled_rows() -> list[report.Row]:
    return rc.compare_refilled(False, 0)


def test_refilled_rows_pass_in_every_mode_with_exact_zeros_where_nothing_is_mined() -> None:
    rows = _refilled_rows()
    assert all(r.passed for r in rows), report.format_table([r for r in rows if not r.passed])
    assert {(r.layer, r.mode) for r in rows} == {
        (layer, mode) for layer, modes in rc.LAYER_MODES.items() for mode in modes
    }
    assert {"TRIPLET", "TUPLE"} == set(rc.LAYER_MODES[rc.TRIPLET_LAYER])
    assert {"GLOBAL", "LOCAL"} == set(rc.LAYER_MODES[rc.CENTER_LAYER])
    zeros = [r for r in rows if "nothing to distill" in r.note]
    assert {(r.layer, r.case) for r in zeros} == {
        (rc.TRIPLET_LAYER, c) for c in ("one_class", "one_per_class", "margin0", "only_ties")
    } | {(rc.CENTER_LAYER, "one_class")}
    assert all("exact zeros" in r.note and r.fwd_abs == r.bwd_abs == 0 for r in zeros)
    # Everything else has something to compare: mined triplets, or several classes.
    for r in rows:
        if r not in zeros:
            assert not r.note.startswith("0 triplets") and not r.note.startswith("1 of"), r


def test_a_wrong_tuple_loss_is_caught_only_in_tuple_mode(monkeypatch) -> None:
    original = torch_refilled.triplet_relation_loss

    def wrong(student, teacher, labels, mode="TRIPLET", **kw):
        out = original(student, teacher, labels, mode, **kw)
        return out * 1.001 if mode == "TUPLE" else out

    monkeypatch.setattr(torch_refilled, "triplet_relation_loss", wrong)
    rows = _refilled_rows()
    failed = {(r.layer, r.mode, r.case) for r in rows if not r.passed}
    with_loss = [c.name for c in rc.triplet_cases(np.random.default_rng(0)) if not c.nothing]
    assert failed == {(rc.TRIPLET_LAYER, "TUPLE", c) for c in with_loss}


def test_a_wrong_center_gradient_with_the_right_loss_is_caught(monkeypatch) -> None:
    original = torch_refilled.local_center_kd_loss

    def wrong(student_logits, teacher_embedding, labels, centers=None, mode="GLOBAL", **kw):
        out = original(student_logits, teacher_embedding, labels, centers, mode, **kw)
        if mode != "LOCAL":
            return out
        return out + 1e-2 * (student_logits - student_logits.detach()).sum()  # adds 0

    monkeypatch.setattr(torch_refilled, "local_center_kd_loss", wrong)
    bad = [r for r in _refilled_rows() if not r.passed]
    assert {(r.layer, r.mode) for r in bad} == {(rc.CENTER_LAYER, "LOCAL")}
    assert {r.case for r in bad} == set(rc.CASE_NAMES[rc.CENTER_LAYER])
    assert all(r.fwd_rel <= 1e-4 < r.bwd_rel for r in bad)


def test_global_rows_depend_on_the_centers_written_into_the_caffe_blob(monkeypatch) -> None:
    original = torch_refilled.local_center_kd_loss

    def other_centers(student_logits, teacher_embedding, labels, centers=None, mode="GLOBAL", **kw):
        if centers is not None:  # still nonzero where filled, zero where not
            centers = centers + 0.05 * centers.flip(1)
        return original(student_logits, teacher_embedding, labels, centers, mode, **kw)

    monkeypatch.setattr(torch_refilled, "local_center_kd_loss", other_centers)
    bad = [r for r in _refilled_rows() if not r.passed]
    assert {(r.layer, r.mode) for r in bad} == {(rc.CENTER_LAYER, "GLOBAL")}
    assert {r.case for r in bad} == set(rc.CASE_NAMES[rc.CENTER_LAYER]) - {"one_class"}


def test_nothing_to_distill_is_judged_by_exact_zeros() -> None:
    """A case claiming nothing to distill that has something fails, even if both agree."""
    case = {c.name: c for c in rc.triplet_cases(np.random.default_rng(0))}["random"]
    claimed = rc.RelationCase(case.name, case.student, case.teacher, case.labels, nothing=True)
    good = rc.compare_case(rc.TRIPLET_LAYER, "TRIPLET", case, np.random.default_rng(1))
    row = rc.compare_case(rc.TRIPLET_LAYER, "TRIPLET", claimed, np.random.default_rng(1))
    assert good.passed and row.fwd_rel == good.fwd_rel and row.bwd_rel == good.bwd_rel
    assert not row.passed and "NOT all zero" in row.note


def test_the_hard_cases_are_what_they_claim() -> None:
    rng = np.random.default_rng(0)
    triplets = {c.name: c for c in rc.triplet_cases(rng)}
    for name, c in triplets.items():
        margin = c.params.get("margin", rc.DEFAULTS["margin"])
        ties = name in ("ties", "only_ties", "duplicates")
        assert rc.mining_clearance(c.student, c.labels, margin, ties) >= rc.MINING_SLACK, name
        y = torch.tensor(c.labels.astype(np.int64))
        found = torch_refilled.mine_triplets(
            torch.tensor(c.student, dtype=torch.float64), y, margin
        )
        assert found.tolist() == rc.mined(c.student, c.labels, margin).tolist(), name
        assert (len(found) == 0) == c.nothing, name
    for name in ("ties", "only_ties", "duplicates"):  # exact ties among the valid triplets
        c = triplets[name]
        gap, valid = rc._gaps(c.student, c.labels)
        assert np.any(gap[valid] == 0), name
    dup = triplets["duplicates"].student.reshape(12, -1)
    assert (dup[4] == dup[1]).all() and (dup[7] == dup[0]).all()
    zero = triplets["zero_rows"]
    assert not zero.student[[2, 5]].any() and not zero.teacher[[3, 5]].any()
    assert triplets["4d"].student.ndim == 4 and triplets["wrn_size"].student.shape[:2] == (64, 128)

    centers = {c.name: c for c in rc.center_cases(rng)}
    absent = centers["absent"]
    present = np.unique(absent.labels).astype(int)
    assert len(present) == 3 and absent.student.shape[1] == 10
    assert not np.delete(absent.centers, present, axis=0).any()  # unfilled, and allowed
    assert len(np.unique(centers["one_class"].labels)) == 1 and centers["one_class"].nothing
    assert len(np.unique(centers["wrn_size"].labels)) < 100 == centers["wrn_size"].student.shape[1]
    assert sorted(centers["one_per_class"].labels) == list(range(8))


def test_mining_clearance_and_the_kl_floor_by_hand() -> None:
    # Unit directions at 0, 60 and 90 degrees: d(0, 1) = 1, d(0, 2) = sqrt 2, so the
    # triplet (0, 1, 2) has gap sqrt 2 - 1 = 0.414; (1, 0, 2) has a negative gap.
    s = np.array([[1.0, 0], [0.5, np.sqrt(0.75)], [0, 3.0]])
    y = np.array([0, 0, 1])
    assert rc.mining_clearance(s, y, 0.5) == pytest.approx(0.5 - (np.sqrt(2) - 1))
    assert rc.mined(s, y, 0.5).tolist() == [[0, 1, 2]]
    assert rc.mining_clearance(s, y, 0.4) == pytest.approx(np.sqrt(2) - 1 - 0.4)
    # The floor bounds every loss from above: |KL| <= sum p_T (|log p_T| + |log p_S|).
    rng = np.random.default_rng(3)
    for layer, cases in ((rc.TRIPLET_LAYER, rc.triplet_cases), (rc.CENTER_LAYER, rc.center_cases)):
        for c in cases(rng):
            for mode in rc.LAYER_MODES[layer]:
                loss, _ = rc.torch_loss(layer, mode, c, 1.0)
                assert 0 <= loss <= rc.kl_term_size(layer, mode, c) + 1e-12, (c.name, mode)


def test_a_caffe_build_without_the_refilled_layers_gives_fail_rows(monkeypatch) -> None:
    monkeypatch.setattr(rc, "missing_layers", lambda: [rc.CENTER_LAYER])
    rows = _refilled_rows()
    center = [r for r in rows if r.layer == rc.CENTER_LAYER]
    assert len(center) == 1 and not center[0].passed and "not in this Caffe" in center[0].note
    assert all(r.passed for r in rows if r.layer == rc.TRIPLET_LAYER)


def test_verify_help_loads_no_caffe() -> None:
    proc = run(
        [sys.executable, "-c", "import sys\nfrom pyirg.verify import cli\ntry:\n"
         "    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
         "print('caffe' in sys.modules)"],
        cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0 and "--no-refilled" in proc.stdout
    assert proc.stdout.splitlines()[-1] == "False"


def test_refilled_defaults_are_caffe_protos_and_the_generators() -> None:
    """verify's stand-ins for unset relation_param fields are what Caffe uses (the proto's
    defaults, float32) and what the stage nets are generated with (RefilledConfig)."""
    from caffe.proto import caffe_pb2

    from pyirg.refilled import RefilledConfig

    proto = caffe_pb2.RelationParameter()
    for key, value in rc.DEFAULTS.items():
        assert np.float32(getattr(proto, key)) == np.float32(value), key
        assert getattr(RefilledConfig, key) == value, key
