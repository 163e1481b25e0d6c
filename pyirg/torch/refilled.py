"""PyTorch reference for REFILLED's two distillation losses (Ye, Lu, Zhan, CVPR 2020).

REFILLED distills relations between instances in two stages, so that a teacher trained on
other classes can still teach:

1. :func:`triplet_relation_loss`: the student's embedding learns, for triplets mined from
   the student itself, how much more likely the teacher finds the anchor closer to the
   positive than to the negative (``"TRIPLET"``), or how the teacher spreads an anchor's
   similarity over its positive and all its mined negatives at once (``"TUPLE"``).
2. :func:`local_center_kd_loss`: the student's classifier, restricted to the classes
   present in the batch, matches the teacher's similarities to those classes' centers
   (``"GLOBAL"`` centers from :func:`class_centers` over the training set, or ``"LOCAL"``
   ones from the batch). The caller adds the usual cross entropy on the labels.

Everything is written from the formulas, with autograd providing the gradients, and imports
nothing of pyirg but the IRG layers' helpers (:mod:`pyirg.torch.layers`), so that a second
implementation (a Caffe layer, say) can be checked against it rather than against itself.
Degenerate inputs are defined rather than left to NaN:

- a zero embedding normalizes to the zero vector, and its gradient through the
  normalization is taken as 0 (the normalization has no limit there);
- a Euclidean distance of 0 (duplicated instances) has gradient 0 (``_safe_sqrt``);
- a batch without any mined triplet gives a loss of exactly 0 that is still connected to
  the student, so ``backward()`` works and yields zero gradients.

Distances come from per-pair differences rather than a Gram matrix, so duplicated
instances are exactly 0 apart and ties are exact; that costs O(N^2 * D) memory, which is
fine for pooled features. The mining mask costs O(N^3) booleans.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# The IRG layers' helpers: the same degenerate cases, defined the same way.
from pyirg.torch.layers import _distances, _flatten, _pairs, _safe_divide, _safe_sqrt

TRIPLET_MODES = ("TRIPLET", "TUPLE")
CENTER_MODES = ("GLOBAL", "LOCAL")
_INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


# ---------------------------------------------------------------- validation


def _same_n(fn: str, arg: str, x: Tensor, ref_arg: str, ref: Tensor) -> None:
    if x.shape[0] != ref.shape[0]:
        raise ValueError(
            f"{fn}: {ref_arg} {tuple(ref.shape)} and {arg} {tuple(x.shape)} must have the same "
            f"number of instances N, got {ref.shape[0]} and {x.shape[0]}"
        )


def _labels(fn: str, labels: Tensor, n: int) -> Tensor:
    """Class indices, one per instance; integer so that equality is exact."""
    if not isinstance(labels, Tensor):
        raise ValueError(f"{fn}: labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dtype not in _INTEGER_DTYPES:
        raise ValueError(f"{fn}: labels must have an integer dtype, got {labels.dtype}")
    if tuple(labels.shape) != (n,):
        raise ValueError(
            f"{fn}: labels must have shape (N,) = ({n},), one per instance, got "
            f"{tuple(labels.shape)}"
        )
    return labels.long()


def _check_in_range(fn: str, labels: Tensor, k: int, what: str) -> None:
    bad = (labels < 0) | (labels >= k)
    if bool(bad.any()):
        raise ValueError(
            f"{fn}: labels must lie in [0, K) with K = {k} ({what}), got "
            f"{sorted(set(labels[bad].tolist()))}"
        )


def _check_mode(fn: str, mode: str, modes: tuple[str, ...]) -> None:
    if mode not in modes:
        raise ValueError(f"{fn}: mode must be one of {modes}, got {mode!r}")


def _check_positive(fn: str, arg: str, value: float) -> None:
    if not value > 0:  # also rejects NaN
        raise ValueError(f"{fn}: {arg} must be > 0, got {value!r}")


def _check_margin(fn: str, margin: float) -> None:
    if not margin >= 0:  # also rejects NaN
        raise ValueError(f"{fn}: margin must be >= 0, got {margin!r}")


def _check_centers(fn: str, centers: object) -> None:
    if not isinstance(centers, Tensor) or centers.dim() != 2:
        shape = tuple(centers.shape) if isinstance(centers, Tensor) else type(centers)
        raise ValueError(f"{fn}: centers must have shape (K, D), got {shape}")


def check_triplet_params(fn: str, mode: str, margin: float, tau1: float) -> None:
    """Reject bad settings early, so a typo cannot silently select a default."""
    _check_mode(fn, mode, TRIPLET_MODES)
    _check_margin(fn, margin)
    _check_positive(fn, "tau1", tau1)


def check_center_params(fn: str, mode: str, tau2: float) -> None:
    """Reject bad settings early, so a typo cannot silently select a default."""
    _check_mode(fn, mode, CENTER_MODES)
    _check_positive(fn, "tau2", tau2)


# ---------------------------------------------------------------- building blocks


def l2_normalize(x: Tensor) -> Tensor:
    """Rows of x (N, D) scaled to unit length; a zero row stays zero, with zero gradient.

    ``F.normalize`` clamps the norm with an epsilon instead, which changes tiny rows and
    their gradients; here nothing but the exact zero row is special.
    """
    return _safe_divide(x, _safe_sqrt((x * x).sum(dim=1, keepdim=True)))


def pairwise_distances(x: Tensor) -> Tensor:
    """Euclidean (not squared) distances (N, N) between the rows of x (N, D)."""
    return _distances(_pairs(x), squared=False)


def _mine(d: Tensor, labels: Tensor, margin: float) -> Tensor:
    """(T, 3) rows (a, p, n) with 0 < d[a, n] - d[a, p] <= margin, in (a, p, n) order."""
    n = d.shape[0]
    same = labels[:, None] == labels[None, :]
    positive = same & ~torch.eye(n, dtype=torch.bool, device=d.device)
    gap = d[:, None, :] - d[:, :, None]  # gap[a, p, n] = d[a, n] - d[a, p]
    keep = positive[:, :, None] & ~same[:, None, :] & (gap > 0) & (gap <= margin)
    return keep.nonzero()  # row-major, hence sorted by a, then p, then n


def mine_triplets(student: Tensor, labels: Tensor, margin: float = 0.2) -> Tensor:
    """The triplets REFILLED trains on, mined from the student's embedding (N, ...).

    Returns a (T, 3) int64 tensor of (anchor, positive, negative) indices: every triple
    with labels[a] == labels[p], a != p, labels[n] != labels[a] and
    0 < d(a, n) - d(a, p) <= margin, where d is the Euclidean distance between the
    L2-normalized flattened embeddings; sorted by a, then p, then n. Only indices come
    out, so nothing is differentiated through the selection.
    """
    fn = "mine_triplets"
    x = _flatten(fn, "student", student)
    y = _labels(fn, labels, x.shape[0])
    _check_margin(fn, margin)
    with torch.no_grad():
        return _mine(pairwise_distances(l2_normalize(x)), y.to(x.device), margin)


def _zero_loss(x: Tensor) -> Tensor:
    """An exact 0 still attached to x's graph: a sum over no element, never NaN."""
    return x.reshape(-1)[:0].sum()


def _tuple_log_softmax(
    d: Tensor, pairs: Tensor, anchors: Tensor, negatives: Tensor, tuple_of: Tensor, tau1: float
) -> tuple[Tensor, Tensor]:
    """Log-softmax over each tuple's logits -[d(a, p), d(a, n_1), ...] / tau1.

    Returns the positive's entry per tuple (U,) and each negative's (T,). The tuples have
    different lengths, so the normalizer is a segmented log-sum-exp (scatter max, index
    add) rather than a padded matrix, and no padding value can leak into the result. The
    shift is detached: log-sum-exp does not depend on it.
    """
    pos = -d[pairs[:, 0], pairs[:, 1]] / tau1
    neg = -d[anchors, negatives] / tau1
    shift = pos.detach().scatter_reduce(0, tuple_of, neg.detach(), reduce="amax")
    total = torch.exp(pos - shift).index_add(0, tuple_of, torch.exp(neg - shift[tuple_of]))
    log_z = shift + torch.log(total)
    return pos - log_z, neg - log_z[tuple_of]


def triplet_relation_loss(
    student: Tensor,
    teacher: Tensor,
    labels: Tensor,
    mode: str = "TRIPLET",
    margin: float = 0.2,
    tau1: float = 4.0,
    scale: float = 1000.0,
) -> Tensor:
    """REFILLED stage 1: match the teacher's triplet relations on the student's triplets.

    ``student`` (N, ...) and ``teacher`` (N, ...) may have different per-instance sizes:
    only distances within each network are compared. Both are flattened and L2-normalized
    per instance; the triplets are those of :func:`mine_triplets` on the student (the
    network that is learning decides which relations are still informative).

    - ``"TRIPLET"``: P = sigmoid((d(a, n) - d(a, p)) / tau1) in each network, and
      loss = scale / (2 T) * sum over the T triplets of KL(Bern(P_T) || Bern(P_S)); the
      2 T is the batch mean over the stacked (P, 1 - P) of the authors' code.
    - ``"TUPLE"``: the triplets sharing (a, p) form one tuple with logits
      -[d(a, p), d(a, n_1), ..., d(a, n_k)] / tau1, and
      loss = scale * mean over tuples of KL(softmax_T || softmax_S).

    With unit-norm embeddings |d(a, n) - d(a, p)| <= 2, so the probabilities stay near 1/2
    and the KL is tiny: hence the large default ``scale``. The teacher is detached. No
    triplet gives exactly 0 (with zero gradients), not NaN.
    """
    fn = "triplet_relation_loss"
    check_triplet_params(fn, mode, margin, tau1)
    s = _flatten(fn, "student", student)
    t = _flatten(fn, "teacher", teacher)
    _same_n(fn, "teacher", teacher, "student", student)
    y = _labels(fn, labels, s.shape[0]).to(s.device)

    d_s = pairwise_distances(l2_normalize(s))
    triplets = _mine(d_s.detach(), y, margin)
    if triplets.shape[0] == 0:
        return _zero_loss(student)
    d_t = pairwise_distances(l2_normalize(t.detach().to(s)))
    a, p, n = triplets.unbind(dim=1)

    if mode == "TRIPLET":
        g_s = (d_s[a, n] - d_s[a, p]) / tau1
        g_t = (d_t[a, n] - d_t[a, p]) / tau1
        # log P and log(1 - P) straight from the logit, without rounding P first
        log_p_s, log_q_s = F.logsigmoid(g_s), F.logsigmoid(-g_s)
        log_p_t, log_q_t = F.logsigmoid(g_t), F.logsigmoid(-g_t)
        kl = torch.exp(log_p_t) * (log_p_t - log_p_s) + torch.exp(log_q_t) * (log_q_t - log_q_s)
        return scale * kl.sum() / (2 * triplets.shape[0])

    pairs, tuple_of = torch.unique_consecutive(triplets[:, :2], dim=0, return_inverse=True)
    pos_s, neg_s = _tuple_log_softmax(d_s, pairs, a, n, tuple_of, tau1)
    pos_t, neg_t = _tuple_log_softmax(d_t, pairs, a, n, tuple_of, tau1)
    kl = torch.exp(pos_t) * (pos_t - pos_s)
    kl = kl.index_add(0, tuple_of, torch.exp(neg_t) * (neg_t - neg_s))
    return scale * kl.mean()


# ---------------------------------------------------------------- stage 2


def class_centers(embeddings: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Global class centers (K, D) for ``"GLOBAL"`` mode, over a whole data set.

    Row c is the mean of the *unnormalized* flattened embeddings of class c, then
    L2-normalized. Every class needs an instance, and a nonzero mean: a zero row is what
    :func:`local_center_kd_loss` rejects as "not filled", so it is refused here already,
    naming the classes. Nothing is differentiated (centers are constants of stage 2).
    """
    fn = "class_centers"
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"{fn}: num_classes must be an int >= 1, got {num_classes!r}")
    x = _flatten(fn, "embeddings", embeddings).detach()
    y = _labels(fn, labels, x.shape[0]).to(x.device)
    _check_in_range(fn, y, num_classes, "num_classes")
    counts = torch.bincount(y, minlength=num_classes)
    missing = (counts == 0).nonzero().flatten().tolist()
    if missing:
        raise ValueError(
            f"{fn}: class(es) {missing} of num_classes = {num_classes} have no instance among "
            f"the {x.shape[0]} embeddings, so their center is undefined"
        )
    sums = x.new_zeros(num_classes, x.shape[1]).index_add(0, y, x)
    means = sums / counts[:, None].to(x.dtype)
    zero = ((means != 0).sum(dim=1) == 0).nonzero().flatten().tolist()
    if zero:
        raise ValueError(f"{fn}: class(es) {zero} have a zero mean embedding: no direction")
    return l2_normalize(means)


def local_center_kd_loss(
    student_logits: Tensor,
    teacher_embedding: Tensor,
    labels: Tensor,
    centers: Tensor | None = None,
    mode: str = "GLOBAL",
    tau2: float = 2.0,
    teaching_weight: float = 100.0,
) -> Tensor:
    """REFILLED stage 2: the student's classifier on the batch's classes mimics the teacher.

    With C_b the sorted classes present in ``labels`` and mu_c the unit center of class c,
    z_T[i, c] = <f_T_i, mu_c> (the teacher embedding flattened, not normalized) and z_S the
    columns C_b of ``student_logits`` (N, K); the loss is
    teaching_weight * (1 / N) * sum_i KL(softmax(z_T_i / tau2) || softmax(z_S_i / tau2)),
    without a tau2^2 factor. Restricting to C_b makes the teacher's classes irrelevant:
    only the batch's classes are compared, which is what lets the teacher come from another
    task.

    - ``"GLOBAL"``: ``centers`` (K, D) holds one center per class, e.g. from
      :func:`class_centers`; each row is L2-normalized here. A zero row for a present class
      means the centers were never filled and raises.
    - ``"LOCAL"``: mu_c is the L2-normalized mean of the batch's (unnormalized) teacher
      embeddings of class c; ``centers`` must be None. A zero mean gives a zero center.

    Only ``student_logits`` receives a gradient. The cross entropy on the labels is the
    caller's to add.
    """
    fn = "local_center_kd_loss"
    check_center_params(fn, mode, tau2)
    if not isinstance(student_logits, Tensor) or student_logits.dim() != 2:
        shape = tuple(student_logits.shape) if isinstance(student_logits, Tensor) else None
        raise ValueError(f"{fn}: student_logits must have shape (N, K), got {shape}")
    z = _flatten(fn, "student_logits", student_logits)
    f_t = _flatten(fn, "teacher_embedding", teacher_embedding).detach().to(z)
    _same_n(fn, "teacher_embedding", teacher_embedding, "student_logits", student_logits)
    y = _labels(fn, labels, z.shape[0]).to(z.device)
    k = z.shape[1]
    _check_in_range(fn, y, k, "student_logits columns")
    present, inverse = torch.unique(y, sorted=True, return_inverse=True)

    if mode == "GLOBAL":
        if centers is None:
            raise ValueError(f"{fn}: mode='GLOBAL' needs centers (K, D), e.g. class_centers()")
        _check_centers(fn, centers)
        if tuple(centers.shape) != (k, f_t.shape[1]):
            raise ValueError(
                f"{fn}: centers {tuple(centers.shape)} must be (K, D) = ({k}, {f_t.shape[1]}): "
                f"K from student_logits {tuple(student_logits.shape)}, D from "
                f"teacher_embedding {tuple(teacher_embedding.shape)}"
            )
        mu = centers.detach().to(f_t)[present]
        unfilled = present[(mu != 0).sum(dim=1) == 0].tolist()
        if unfilled:
            raise ValueError(
                f"{fn}: centers rows {unfilled} are all zeros although those classes are in "
                "the batch: the centers were not filled (see class_centers)"
            )
    else:
        if centers is not None:
            raise ValueError(f"{fn}: centers are only used by mode='GLOBAL', got mode={mode!r}")
        sums = f_t.new_zeros(present.shape[0], f_t.shape[1]).index_add(0, inverse, f_t)
        counts = torch.bincount(inverse, minlength=present.shape[0])
        mu = sums / counts[:, None].to(f_t.dtype)
    mu = l2_normalize(mu)

    log_p_t = F.log_softmax(f_t @ mu.T / tau2, dim=1)
    log_p_s = F.log_softmax(z[:, present] / tau2, dim=1)
    kl = (torch.exp(log_p_t) * (log_p_t - log_p_s)).sum(dim=1)
    return teaching_weight * kl.mean()


# ---------------------------------------------------------------- modules


class TripletRelationLoss(nn.Module):
    """Module form of :func:`triplet_relation_loss`, settings validated at construction."""

    def __init__(
        self, mode: str = "TRIPLET", margin: float = 0.2, tau1: float = 4.0, scale: float = 1000.0
    ) -> None:
        super().__init__()
        check_triplet_params("TripletRelationLoss", mode, margin, tau1)
        self.mode = mode
        self.margin = float(margin)
        self.tau1 = float(tau1)
        self.scale = float(scale)

    def extra_repr(self) -> str:
        return f"mode={self.mode}, margin={self.margin}, tau1={self.tau1}, scale={self.scale}"

    def forward(self, student: Tensor, teacher: Tensor, labels: Tensor) -> Tensor:
        return triplet_relation_loss(
            student, teacher, labels, self.mode, self.margin, self.tau1, self.scale
        )


class LocalCenterKDLoss(nn.Module):
    """Module form of :func:`local_center_kd_loss`; GLOBAL centers live in a buffer.

    The buffer moves with ``.to()`` and is saved in ``state_dict``, so a stage-2 checkpoint
    keeps the centers it was trained with. They may be given later by :meth:`set_centers`.
    """

    centers: Tensor | None

    def __init__(
        self,
        mode: str = "GLOBAL",
        tau2: float = 2.0,
        teaching_weight: float = 100.0,
        centers: Tensor | None = None,
    ) -> None:
        super().__init__()
        check_center_params("LocalCenterKDLoss", mode, tau2)
        self.mode = mode
        self.tau2 = float(tau2)
        self.teaching_weight = float(teaching_weight)
        self.register_buffer("centers", None)
        if centers is not None:
            self.set_centers(centers)

    def set_centers(self, centers: Tensor) -> None:
        """Store a detached copy of the (K, D) centers (GLOBAL mode only)."""
        if self.mode != "GLOBAL":
            raise ValueError("LocalCenterKDLoss: centers are only used by mode='GLOBAL'")
        _check_centers("LocalCenterKDLoss", centers)
        self.centers = centers.detach().clone()

    def extra_repr(self) -> str:
        shape = None if self.centers is None else tuple(self.centers.shape)
        return (
            f"mode={self.mode}, tau2={self.tau2}, teaching_weight={self.teaching_weight}, "
            f"centers={shape}"
        )

    def forward(self, student_logits: Tensor, teacher_embedding: Tensor, labels: Tensor) -> Tensor:
        return local_center_kd_loss(
            student_logits,
            teacher_embedding,
            labels,
            self.centers,
            self.mode,
            self.tau2,
            self.teaching_weight,
        )


__all__ = [
    "CENTER_MODES",
    "TRIPLET_MODES",
    "LocalCenterKDLoss",
    "TripletRelationLoss",
    "class_centers",
    "l2_normalize",
    "local_center_kd_loss",
    "mine_triplets",
    "pairwise_distances",
    "triplet_relation_loss",
]
