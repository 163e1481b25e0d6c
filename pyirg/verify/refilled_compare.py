"""The REFILLED loss layers compared with their PyTorch reference: Caffe (float32) against
:mod:`pyirg.torch.refilled` (float64).

Why a module of its own: the IRG layers (:mod:`pyirg.verify.layer_compare`) map features
to distances and are checked three ways for every ``irg_param`` setting; the REFILLED
layers are losses with a discrete part (triplet mining, the batch's classes), so what
needs care here is different: inputs whose mining decision cannot flip between float32
and float64, and batches where there is nothing to distill.

Each row: one layer, one setting (``TRIPLET``/``TUPLE`` of ``TripletRelationLoss``,
``GLOBAL``/``LOCAL`` of ``LocalCenterKDLoss``, the enum names read from caffe.proto), one
case; the loss value (fwd) and the gradient to the student bottom (bwd), for a random
top diff ``w`` (the loss weight the net would apply), against ``w`` times the reference's
autograd gradient. Tolerance: 1e-4 relative (``FLOAT_TOL``: Caffe runs in float32, the
reference in float64 on the same float32 values); errors as in :mod:`pyirg.verify.report`
with the plain floor (max |reference|). The teacher and label bottoms take no gradient
(the layers refuse it), so there is none to compare.

Mining: Caffe mines on float32 distances, the reference on float64 ones, so a gap
``d(a, n) - d(a, p)`` within rounding of 0 or of ``margin`` could be mined by one side
only, a disagreement about the input rather than the layer. Random inputs are therefore
drawn again until every gap of a valid (a, p, n) is at least ``MINING_SLACK`` (1e-5, some
50 float32 roundings of a unit-norm distance) from both ends of the window, and the hard
cases are built so that the same holds, except for gaps that are *exactly* 0 in both
precisions (exact ties: instances at symmetric positions, duplicates across classes),
which neither side may mine. :func:`mining_clearance` measures it; the row's note gives
the reference's triplet and tuple counts, so a row shows what it exercised.

Batches with nothing to distill (one class, one instance per class, ``margin`` 0, only
ties; a single class present in stage 2) must give a loss of exactly 0 and an all-zero
gradient on both sides: that is checked exactly, not within the tolerance.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from caffe.proto import caffe_pb2

from pyirg.caffeio import caffe_net
from pyirg.refilled import CENTERS, FIXED, MODES
from pyirg.torch import refilled as ref
from pyirg.verify.layer_compare import forward_backward, one_layer_net, pooled
from pyirg.verify.report import CAFFE_ROW, EPS32, FLOAT_TOL, MISSING, Row, errors, make_row

TRIPLET_LAYER, CENTER_LAYER = "TripletRelationLoss", "LocalCenterKDLoss"
LAYERS = (TRIPLET_LAYER, CENTER_LAYER)
#: The settings each layer is checked in (caffe.proto's enum names).
LAYER_MODES = {TRIPLET_LAYER: MODES, CENTER_LAYER: CENTERS}
#: relation_param's defaults (caffe.proto's, the authors'), where a case leaves one unset;
#: written out, not read from pyirg.refilled, so a test can hold both against the proto.
DEFAULTS = {"margin": 0.2, "tau1": 4.0, "scale": 1000.0, "tau2": 2.0, "teaching_weight": 100.0}
#: Smallest distance of a nonzero mining gap from 0 and from the margin (see above).
MINING_SLACK = 1e-5
#: Random draws tried before a case generator gives up on the mining clearance.
MAX_DRAWS = 200


@dataclass(frozen=True)
class RelationCase:
    """Bottoms of one case (float32, what Caffe gets) and the layer settings.

    ``params`` are relation_param fields (margin, tau1, scale; tau2, teaching_weight);
    ``centers`` are the GLOBAL centers (K x D', unnormalized), filled into the layer's
    blob; ``nothing`` marks a batch with nothing to distill (exact zeros expected).
    """

    name: str
    student: np.ndarray
    teacher: np.ndarray
    labels: np.ndarray
    params: dict[str, float] = field(default_factory=dict)
    centers: np.ndarray | None = None
    nothing: bool = False


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """The rows scaled to unit L2 norm, as the layers normalize them (zero rows stay 0)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def _unit_distances(x: np.ndarray) -> np.ndarray:
    """float64 Euclidean distances between the L2-normalized rows."""
    u = _unit_rows(x.reshape(len(x), -1).astype(np.float64))
    return np.sqrt(((u[:, None, :] - u[None, :, :]) ** 2).sum(axis=2))


def _gaps(student: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(gap, valid), both N x N x N: gap[a, p, n] = d(a, n) - d(a, p) on the normalized
    student embedding; valid where labels a = p, a != p and label n != label a."""
    d = _unit_distances(student)
    y = np.asarray(labels).astype(int)
    same = y[:, None] == y[None, :]
    valid = (same & ~np.eye(len(y), dtype=bool))[:, :, None] & ~same[:, None, :]
    return d[:, None, :] - d[:, :, None], valid


def mined(student: np.ndarray, labels: np.ndarray, margin: float) -> np.ndarray:
    """(T, 3) triplets (a, p, n) with 0 < gap <= margin, sorted: the layers' definition,
    in NumPy, for the notes and the rounding floor (not for the comparison itself)."""
    gap, valid = _gaps(student, labels)
    return np.argwhere(valid & (gap > 0) & (gap <= margin))


def mining_clearance(
    student: np.ndarray, labels: np.ndarray, margin: float, ties: bool = False
) -> float:
    """How far the gaps of all valid (a, p, n) lie from 0 and from ``margin`` (inf: none).

    ``ties``: leave exactly-zero gaps out, for the cases built so that they are exact ties
    in float32 too (symmetric positions, duplicates); elsewhere a zero gap (e.g. a zero
    anchor: all its distances are 1, in float32 within rounding of 1) counts as 0.
    """
    gap, valid = _gaps(student, labels)
    gap = gap[valid]
    if ties:
        gap = gap[gap != 0]
    if gap.size == 0:
        return math.inf
    return float(np.min(np.minimum(np.abs(gap), np.abs(gap - margin))))


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def kl_term_size(layer: str, mode: str, case: RelationCase) -> float:
    """The size of the terms the loss sums, ``factor * sum p_T (|log p_T| + |log p_S|)``
    over every distribution compared, in float64.

    A float32 KL of two close distributions cancels: its value can be far below its
    terms, and one float32 rounding of the terms (``EPS32`` times this) is then the best
    any float32 computation can do. That bounds the forward where the plain relative
    error cannot (the WRN-sized TUPLE case: 30-way softmaxes within 1e-3 of uniform).
    """
    settings = {**DEFAULTS, **case.params}
    if layer == TRIPLET_LAYER:
        tau1, scale = settings["tau1"], settings["scale"]
        t = mined(case.student, case.labels, settings["margin"])
        if len(t) == 0:
            return 0.0
        a, p, n = t.T
        d_s, d_t = _unit_distances(case.student), _unit_distances(case.teacher)
        if mode == "TRIPLET":
            z_s = np.stack([d_s[a, n] - d_s[a, p], np.zeros(len(t))], axis=1) / tau1
            z_t = np.stack([d_t[a, n] - d_t[a, p], np.zeros(len(t))], axis=1) / tau1
            pairs = [(z_t, z_s)]
            factor = scale / (2 * len(t))
        else:
            keys = sorted({(int(i), int(j)) for i, j in zip(a, p)})
            pairs = []
            for i, j in keys:
                neg = n[(a == i) & (p == j)]
                pairs.append((-np.append(d_t[i, j], d_t[i, neg]) / tau1,
                              -np.append(d_s[i, j], d_s[i, neg]) / tau1))  # fmt: skip
            factor = scale / len(keys)
    else:
        tau2, weight = settings["tau2"], settings["teaching_weight"]
        n_inst = case.student.shape[0]
        z = case.student.reshape(n_inst, -1).astype(np.float64)
        f = case.teacher.reshape(n_inst, -1).astype(np.float64)
        y = case.labels.astype(int)
        present = np.unique(y)
        if mode == "GLOBAL":
            mu = case.centers[present].astype(np.float64)
        else:
            mu = np.stack([f[y == c].mean(axis=0) for c in present])
        pairs = [(f @ _unit_rows(mu).T / tau2, z[:, present] / tau2)]
        factor = weight / n_inst
    total = 0.0
    for z_t, z_s in pairs:
        log_t, log_s = _log_softmax(z_t), _log_softmax(z_s)
        total += float((np.exp(log_t) * (np.abs(log_t) + np.abs(log_s))).sum())
    return factor * total


def _cleared(
    rng: np.random.Generator,
    draw: Callable[[], tuple[np.ndarray, np.ndarray]],
    margin: float,
    ties: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """A draw of (student, labels) whose mining cannot flip in float32 (float32 first, so
    the clearance is measured on the values Caffe gets)."""
    for _ in range(MAX_DRAWS):
        student, labels = draw()
        student = student.astype(np.float32)
        if mining_clearance(student, labels, margin, ties) >= MINING_SLACK:
            return student, labels
    raise RuntimeError(f"no draw with a mining clearance of {MINING_SLACK} in {MAX_DRAWS}")


def _classes(n: int, k: int) -> np.ndarray:
    """n labels cycling over k classes: every class has n // k or more instances."""
    return (np.arange(n) % k).astype(np.float32)


def triplet_cases(rng: np.random.Generator) -> list[RelationCase]:
    """Inputs for TripletRelationLoss: random, 4-D, WRN-sized, and the hard ones."""
    margin = DEFAULTS["margin"]

    def gaussian(n: int, d: int, k: int) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
        return lambda: (rng.standard_normal((n, d)), _classes(n, k))

    x, y = _cleared(rng, gaussian(12, 6, 3), margin)
    params = {"margin": 0.5, "tau1": 1.5, "scale": 10.0}
    xp, yp = _cleared(rng, gaussian(12, 6, 3), params["margin"])
    x4, y4 = _cleared(rng, lambda: (rng.standard_normal((10, 2, 2, 2)), _classes(10, 2)), margin)
    # A WRN-16-2 student's and a WRN-40-2 teacher's 128-wide embeddings, 16 classes.
    xw, yw = _cleared(rng, gaussian(64, 128, 16), margin)

    # Ties: axis directions (exact after normalization, power-of-two scales) are sqrt(2)
    # or 2 apart; a margin of 0.6 mines the gaps 2 - sqrt(2), the zero gaps are exact ties.
    axes = np.eye(4)
    tie = np.stack([axes[0], axes[1], 0.5 * axes[2], axes[2], -axes[0], 2 * axes[3],
                    -axes[1], 4 * axes[0], -axes[3]])  # fmt: skip
    tie_labels = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2], np.float32)

    # Duplicates: within a class (distance 0, whose gradient is taken as 0) and across
    # classes (an exact tie of d(a, n) with d(a, p)).
    def duplicated() -> tuple[np.ndarray, np.ndarray]:
        s = rng.standard_normal((12, 5))
        s[4], s[7] = s[1], s[0]  # 4 ~ 1 (class 1 both), 7 ~ 0 (class 1 and 0)
        return s, _classes(12, 3)

    xd, yd = _cleared(rng, duplicated, margin, ties=True)

    # Zero rows: a zero anchor is 1 from every instance (in float32 within rounding of
    # 1), so its gaps would be float32 coin flips; two zero rows of a class of their own
    # are 0 apart (gap 1 - 0, never mined) and only ever negatives of the others.
    def zero_rows() -> tuple[np.ndarray, np.ndarray]:
        s = rng.standard_normal((12, 5))
        s[[2, 5]] = 0
        y = _classes(12, 3)
        y[[2, 5]] = 3
        return s, y

    xz, yz = _cleared(rng, zero_rows, margin)
    tz = rng.standard_normal((12, 7))
    tz[[3, 5]] = 0

    def teacher(s: np.ndarray, d: int = 7) -> np.ndarray:
        return rng.standard_normal((s.shape[0], d))

    one_class = rng.standard_normal((8, 5))
    distinct = rng.standard_normal((8, 5))
    return [
        RelationCase("random", pooled(x), pooled(teacher(x)), y),
        RelationCase("params", pooled(xp), pooled(teacher(xp)), yp, params),
        RelationCase("4d", x4, pooled(rng.standard_normal((10, 3, 1, 2))), y4),
        RelationCase("wrn_size", pooled(xw), pooled(teacher(xw, 128)), yw),
        RelationCase("ties", pooled(tie), pooled(teacher(tie)), tie_labels, {"margin": 0.6}),
        RelationCase("duplicates", pooled(xd), pooled(teacher(xd)), yd),
        RelationCase("zero_rows", pooled(xz), pooled(tz), yz),
        RelationCase(
            "one_class", pooled(one_class), pooled(teacher(one_class)),
            np.zeros(8, np.float32), nothing=True,
        ),
        RelationCase(
            "one_per_class", pooled(distinct), pooled(teacher(distinct)),
            np.arange(8, dtype=np.float32), nothing=True,
        ),
        RelationCase("margin0", pooled(x), pooled(teacher(x)), y, {"margin": 0.0}, nothing=True),
        RelationCase("only_ties", pooled(tie), pooled(teacher(tie)), tie_labels, nothing=True),
    ]  # fmt: skip


def center_cases(rng: np.random.Generator) -> list[RelationCase]:
    """Inputs for LocalCenterKDLoss (with GLOBAL centers, ignored in LOCAL mode)."""

    def case(
        name: str,
        labels: np.ndarray,
        k: int,
        d: int = 6,
        *,
        logits: np.ndarray | None = None,
        teacher: np.ndarray | None = None,
        params: dict[str, float] | None = None,
        fill_absent: bool = True,
        nothing: bool = False,
    ) -> RelationCase:
        n = len(labels)
        z = 2 * rng.standard_normal((n, k)) if logits is None else logits
        f = rng.standard_normal((n, d)) if teacher is None else teacher
        # Centers of any scale (the layer normalizes them); absent classes may be unfilled.
        centers = rng.standard_normal((k, f.reshape(n, -1).shape[1])) * rng.uniform(0.2, 5)
        if not fill_absent:
            centers[~np.isin(np.arange(k), labels)] = 0
        return RelationCase(
            name,
            pooled(z),
            pooled(f),
            labels.astype(np.float32),
            params or {},
            centers.astype(np.float32),
            nothing,
        )

    k = 8
    some = rng.choice([0, 2, 3, 5, 6], size=12).astype(np.float32)  # 1, 4, 7 absent
    dup_logits, dup_teacher = 2 * rng.standard_normal((12, k)), rng.standard_normal((12, 6))
    dup_logits[5], dup_teacher[5] = dup_logits[2], dup_teacher[2]
    dup_labels = some.copy()
    dup_labels[5] = dup_labels[2]
    zero_logits, zero_teacher = 2 * rng.standard_normal((12, k)), rng.standard_normal((12, 6))
    zero_labels = np.array([0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 4, 6], np.float32)
    zero_logits[[1, 4]] = 0
    zero_teacher[[2, 9, 11]] = 0  # 11 is class 6's only instance: a zero LOCAL center
    return [
        case("random", some, k),
        case("params", some, k, params={"tau2": 0.5, "teaching_weight": 3.0}),
        case("4d", some, k, teacher=rng.standard_normal((12, 3, 2, 1))),
        # A WRN's 128-wide teacher embedding and 100 classes, about half of them present.
        case("wrn_size", rng.integers(0, 100, 64).astype(np.float32), 100, 128),
        case("absent", rng.choice([1, 4, 7], size=12).astype(np.float32), 10, fill_absent=False),
        case("one_per_class", rng.permutation(k).astype(np.float32), k),
        case("duplicates", dup_labels, k, logits=dup_logits, teacher=dup_teacher),
        case("zero_rows", zero_labels, k, logits=zero_logits, teacher=zero_teacher),
        case(
            "large", some, k,
            logits=100 * rng.standard_normal((12, k)), teacher=100 * rng.standard_normal((12, 6)),
        ),
        case("one_class", np.full(10, 3, np.float32), k, fill_absent=False, nothing=True),
    ]  # fmt: skip


CASE_NAMES = {
    TRIPLET_LAYER: tuple(c.name for c in triplet_cases(np.random.default_rng(0))),
    CENTER_LAYER: tuple(c.name for c in center_cases(np.random.default_rng(0))),
}

# ------------------------------------------------------------- the two under test


def torch_loss(layer: str, mode: str, case: RelationCase, w: float) -> tuple[float, np.ndarray]:
    """The reference in float64: loss and ``w`` times its gradient to the student bottom
    (looked up in :mod:`pyirg.torch.refilled` at call time, so tests can patch it)."""
    s = torch.tensor(case.student, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(case.teacher, dtype=torch.float64)
    y = torch.tensor(case.labels.astype(np.int64))
    if layer == TRIPLET_LAYER:
        loss = ref.triplet_relation_loss(s, t, y, mode, **case.params)
    else:
        centers = torch.tensor(case.centers, dtype=torch.float64) if mode == "GLOBAL" else None
        logits = s.reshape(s.shape[0], -1)
        loss = ref.local_center_kd_loss(logits, t, y, centers, mode, **case.params)
    (w * loss).backward()
    grad = np.zeros(case.student.shape) if s.grad is None else s.grad.numpy()
    return float(loss.detach()), grad


def caffe_loss(layer: str, mode: str, case: RelationCase, w: float) -> tuple[float, np.ndarray]:
    """The Caffe layer: loss and student diff after a backward with top diff ``w``; GLOBAL
    centers are written into the layer's blob first."""
    bottoms = {name: getattr(case, name) for name in ("student", "teacher", "labels")}
    param, loss = one_layer_net(layer, bottoms)
    rp = loss.relation_param
    if layer == TRIPLET_LAYER:
        rp.mode = getattr(caffe_pb2.RelationParameter, mode)
    else:
        rp.centers = getattr(caffe_pb2.RelationParameter, mode)
        loss.param.add(**FIXED[0])
    for key, value in case.params.items():
        setattr(rp, key, value)
    net = caffe_net(param)
    if layer == CENTER_LAYER and mode == "GLOBAL":
        net.params[loss.name][0].data[...] = case.centers
    top, diffs = forward_backward(net, bottoms, w)
    return float(top.reshape(-1)[0]), diffs[0]


# -------------------------------------------------------------------- comparisons


def _what(layer: str, case: RelationCase) -> str:
    """What the case exercises: triplets and tuples mined, or classes present."""
    if layer == TRIPLET_LAYER:
        t = mined(case.student, case.labels, case.params.get("margin", DEFAULTS["margin"]))
        return f"{len(t)} triplets, {len({(a, p) for a, p, _ in t.tolist()})} tuples"
    k = int(np.prod(case.student.shape[1:]))
    return f"{len(np.unique(case.labels))} of {k} classes present"


def compare_case(layer: str, mode: str, case: RelationCase, rng: np.random.Generator) -> Row:
    """One row: Caffe's loss and student gradient against the reference's."""
    w = float(np.float32(rng.uniform(0.5, 2.0)))  # exact in float32: both sides see it
    t_loss, t_grad = torch_loss(layer, mode, case, w)
    c_loss, c_grad = caffe_loss(layer, mode, case, w)
    fwd = errors(np.array([c_loss]), np.array([t_loss]))
    bwd = errors(c_grad, t_grad)
    note = _what(layer, case)
    bwd_ok = fwd_ok = None
    rounding = EPS32 * kl_term_size(layer, mode, case)
    if fwd[1] > FLOAT_TOL and fwd[0] <= rounding:
        note += f", fwd within one float32 rounding of the KL terms ({rounding:.1e})"
        fwd_ok = True
    if case.nothing:
        zeros = c_loss == 0 and t_loss == 0 and not np.any(c_grad) and not np.any(t_grad)
        note += ", nothing to distill: " + ("exact zeros" if zeros else "NOT all zero")
        bwd_ok = zeros and bwd[1] <= FLOAT_TOL
    return make_row(layer, mode, CAFFE_ROW, case.name, fwd, bwd, FLOAT_TOL, note, bwd_ok, fwd_ok)


def missing_layers() -> list[str]:
    """The REFILLED layer types this Caffe build lacks (building their net would abort)."""
    import caffe

    known = set(caffe.layer_type_list())
    return [layer for layer in LAYERS if layer not in known]


def compare_refilled(full: bool, seed: int) -> list[Row]:
    """Every mode x case once; ``full`` adds two more random draws. One generator, so a seed
    fixes the whole run. A layer missing from the Caffe build is one FAIL row (the
    verification cannot be made)."""
    rng = np.random.default_rng(seed)
    absent = missing_layers()
    note = "layer type not in this Caffe build (tools/build_caffe.sh)"
    rows = [
        make_row(layer, "-", CAFFE_ROW, "-", MISSING, MISSING, FLOAT_TOL, note) for layer in absent
    ]
    builders = {TRIPLET_LAYER: triplet_cases, CENTER_LAYER: center_cases}
    for layer in LAYERS:
        if layer in absent:
            continue
        draws: dict[int, list[RelationCase]] = {}
        for mode, draw in itertools.product(LAYER_MODES[layer], range(3 if full else 1)):
            if draw not in draws:  # drawn where first needed: the generator's order is the run's
                draws[draw] = builders[layer](rng)
            for case in draws[draw]:
                row = compare_case(layer, mode, case, rng)
                row.case = case.name if draw == 0 else f"{case.name}#{draw}"
                rows.append(row)
    return rows
