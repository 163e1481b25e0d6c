"""Tests of the REFILLED reference losses (pyirg.torch.refilled).

Expected values come from hand arithmetic or from the plain loops written here (triple
for-loop mining, explicit sigmoid / softmax / KL), never from the code under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pyirg.torch.refilled import (
    LocalCenterKDLoss,
    TripletRelationLoss,
    class_centers,
    local_center_kd_loss,
    mine_triplets,
    triplet_relation_loss,
)

TRIPLET_MODES = ("TRIPLET", "TUPLE")
CENTER_MODES = ("GLOBAL", "LOCAL")
SQRT2 = math.sqrt(2.0)
BOUNDARY_GAP = 1e-3  # gradcheck inputs keep every candidate gap this far from 0 and margin


def tensor(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def rand_labels(n: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, k, (n,), generator=g)


# ---------------------------------------------------------------- loop references


def loop_rows(x: torch.Tensor) -> list[list[float]]:
    return [[float(v) for v in row] for row in x.detach().reshape(x.shape[0], -1).tolist()]


def loop_normalize(rows: list[list[float]]) -> list[list[float]]:
    out = []
    for row in rows:
        total = 0.0
        for v in row:
            total += v * v
        norm = math.sqrt(total)
        out.append([v / norm for v in row] if norm > 0 else [0.0] * len(row))
    return out


def loop_dist(u: list[float], v: list[float]) -> float:
    total = 0.0
    for a, b in zip(u, v):
        total += (a - b) * (a - b)
    return math.sqrt(total)


def loop_candidates(x: list[list[float]], labels: list[int]):
    """Every (a, p, n) allowed by the labels, with its gap d(a, n) - d(a, p)."""
    n = len(x)
    for a in range(n):
        for p in range(n):
            if p == a or labels[p] != labels[a]:
                continue
            for q in range(n):
                if labels[q] != labels[a]:
                    yield a, p, q, loop_dist(x[a], x[q]) - loop_dist(x[a], x[p])


def loop_mine(x: list[list[float]], labels: list[int], margin: float) -> list[tuple[int, ...]]:
    return [(a, p, q) for a, p, q, gap in loop_candidates(x, labels) if 0 < gap <= margin]


def loop_sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def loop_kl(p: list[float], q: list[float]) -> float:
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q) if pi > 0)


def loop_softmax(logits: list[float]) -> list[float]:
    top = max(logits)
    e = [math.exp(v - top) for v in logits]
    s = sum(e)
    return [v / s for v in e]


def loop_triplet_loss(
    student, teacher, labels, mode="TRIPLET", margin=0.2, tau1=4.0, scale=1000.0
) -> float:
    xs = loop_normalize(loop_rows(student))
    xt = loop_normalize(loop_rows(teacher))
    y = [int(v) for v in labels.tolist()]
    triplets = loop_mine(xs, y, margin)
    if not triplets:
        return 0.0
    if mode == "TRIPLET":
        total = 0.0
        for a, p, q in triplets:
            ps = loop_sigmoid((loop_dist(xs[a], xs[q]) - loop_dist(xs[a], xs[p])) / tau1)
            pt = loop_sigmoid((loop_dist(xt[a], xt[q]) - loop_dist(xt[a], xt[p])) / tau1)
            total += loop_kl([pt, 1 - pt], [ps, 1 - ps])
        return scale * total / (2 * len(triplets))
    tuples: dict[tuple[int, int], list[int]] = {}
    for a, p, q in triplets:
        tuples.setdefault((a, p), []).append(q)
    total = 0.0
    for (a, p), negatives in tuples.items():
        dists = [
            [loop_dist(x[a], x[p])] + [loop_dist(x[a], x[q]) for q in negatives] for x in (xs, xt)
        ]
        ps, pt = (loop_softmax([-d / tau1 for d in ds]) for ds in dists)
        total += loop_kl(pt, ps)
    return scale * total / len(tuples)


def loop_means(rows: list[list[float]], y: list[int], classes: list[int]) -> list[list[float]]:
    means = []
    for c in classes:
        members = [row for row, label in zip(rows, y) if label == c]
        means.append([sum(col) / len(members) for col in zip(*members)])
    return means


def loop_center_loss(
    logits, teacher, labels, centers=None, mode="GLOBAL", tau2=2.0, weight=100.0
) -> float:
    z = loop_rows(logits)
    f = loop_rows(teacher)
    y = [int(v) for v in labels.tolist()]
    classes = sorted(set(y))
    if mode == "GLOBAL":
        mu = loop_normalize([loop_rows(centers)[c] for c in classes])
    else:
        mu = loop_normalize(loop_means(f, y, classes))
    total = 0.0
    for i in range(len(z)):
        zt = [sum(a * b for a, b in zip(f[i], m)) / tau2 for m in mu]
        zs = [z[i][c] / tau2 for c in classes]
        total += loop_kl(loop_softmax(zt), loop_softmax(zs))
    return weight * total / len(z)


def loop_triplet_numeric_grad(student, teacher, labels, mode, h=1e-6) -> np.ndarray:
    """Central differences of the loop loss: a gradient that owes nothing to autograd."""
    base = student.detach().clone()
    grad = np.zeros(base.numel())
    for k in range(base.numel()):
        lo, hi = base.clone(), base.clone()
        lo.view(-1)[k] -= h
        hi.view(-1)[k] += h
        grad[k] = (
            loop_triplet_loss(hi, teacher, labels, mode)
            - loop_triplet_loss(lo, teacher, labels, mode)
        ) / (2 * h)
    return grad.reshape(base.shape)


def assert_close(got: torch.Tensor, want: float) -> None:
    np.testing.assert_allclose(float(got.detach()), want, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- batches


def boundary_distance(student, labels, margin: float) -> float:
    """How close any candidate triplet's gap comes to the mining boundaries 0 and margin."""
    xs = loop_normalize(loop_rows(student))
    y = [int(v) for v in labels.tolist()]
    return min(
        (min(abs(gap), abs(gap - margin)) for *_, gap in loop_candidates(xs, y)),
        default=math.inf,
    )


def safe_batch(seed: int, margin: float = 0.2, need_tuple_of: int = 1):
    """A random batch, random sizes, whose mining is stable under small perturbations.

    Retries seeds until every candidate gap is BOUNDARY_GAP away from both boundaries, no
    two student instances coincide (distance not differentiable at 0) and the mined set
    has a tuple with at least ``need_tuple_of`` negatives, so that gradcheck sees a
    smooth, nontrivial function.
    """
    g = torch.Generator().manual_seed(seed)
    for _ in range(200):
        n = int(torch.randint(6, 11, (1,), generator=g))
        k = int(torch.randint(2, 4, (1,), generator=g))
        s_shape = [(3,), (2, 2), (4, 1, 1)][int(torch.randint(0, 3, (1,), generator=g))]
        t_shape = [(2,), (5,), (3, 2)][int(torch.randint(0, 3, (1,), generator=g))]
        s = torch.randn(n, *s_shape, generator=g, dtype=torch.float64)
        t = torch.randn(n, *t_shape, generator=g, dtype=torch.float64)
        y = torch.randint(0, k, (n,), generator=g)
        xs = loop_normalize(loop_rows(s))
        mined = loop_mine(xs, y.tolist(), margin)
        sizes = {}
        for a, p, _ in mined:
            sizes[a, p] = sizes.get((a, p), 0) + 1
        apart = min(loop_dist(xs[i], xs[j]) for i in range(n) for j in range(i))
        if (
            sizes
            and max(sizes.values()) >= need_tuple_of
            and apart > BOUNDARY_GAP
            and boundary_distance(s, y, margin) > BOUNDARY_GAP
        ):
            return s, t, y
    raise AssertionError("no safe batch found")


def square_batch():
    """Exact points on the unit axes (scaled): every distance is 0, sqrt(2) or 2.

    Rows 1 and 10 share a class and a direction (d = 0). Gaps are then exactly 0 (ties,
    the strict lower bound), 2 (the inclusive upper bound at margin 2), 2 - sqrt(2) or
    sqrt(2). sqrt(2) is whatever the library rounds it to: torch.sqrt is not correctly
    rounded on every CPU (one ulp low in float64 on an AVX-512 Intel Xeon), so no case
    puts a margin at a gap that involves it.
    """
    s = tensor(
        [[1, 0], [0, 2], [-3, 0], [0, -1], [2, 0], [0, 1], [-1, 0], [0, -4], [1, 0], [0, 5], [0, 3]]
    )
    y = torch.tensor([0, 0, 1, 1, 1, 2, 2, 0, 2, 1, 0])
    return s, rand(11, 3, seed=90), y


def exact_batch():
    """Unit vectors in 4-D whose distances are 0, 1, 2 or sqrt(3) (x1 = e1, x2 = -e1,
    halves of +-1/2): the gaps 1 (= margin 1, the inclusive upper bound) and 0 (the
    strict lower bound) come from distances every sqrt gives exactly."""
    s = tensor([[1, 0, 0, 0], [0.5, 0.5, 0.5, 0.5], [-1, 0, 0, 0], [0.5, -0.5, 0.5, 0.5]])
    return s, rand(4, 3, seed=93), torch.tensor([0, 0, 1, 1])


def hard_batches():
    """(name, student, teacher, labels, margin) for the loop comparison."""
    out = []
    out.append(("exact-at-margin", *exact_batch(), 1.0))
    s, t, y = square_batch()
    out.append(("square-wide", s, t, y, 2.0))
    out.append(("square-zero-margin", s, t, y, 0.0))
    s = rand(9, 3, seed=91)
    t = rand(9, 4, seed=92)
    s[4] = s[1]  # duplicated instances: d = 0 within a class, ties across classes
    s[6] = 2.5 * s[0]  # same direction: duplicated after normalization
    s[7] = s[2]
    t[5] = t[3]
    out.append(("duplicates", s, t, torch.tensor([0, 0, 1, 1, 0, 2, 1, 1, 2]), 0.5))
    s = rand(8, 2, 2, seed=93)
    t = rand(8, 3, seed=94)
    s[2] = 0.0
    s[5] = 0.0
    t[1] = 0.0
    out.append(("zero-rows", s, t, torch.tensor([0, 1, 0, 1, 2, 2, 0, 1]), 1.0))
    out.append(("student-equals-teacher", s, s.clone(), torch.tensor([0, 1, 0, 1, 2, 2, 0, 1]), 2))
    out.append(("one-class", rand(7, 3, seed=95), rand(7, 2, seed=96), torch.zeros(7).long(), 2))
    out.append(("one-per-class", rand(5, 3, seed=97), rand(5, 2, seed=98), torch.arange(5), 2))
    out.append(("one-instance", rand(1, 3, seed=99), rand(1, 2, seed=100), torch.tensor([3]), 2))
    return out


HARD = hard_batches()
NO_TRIPLETS = ("square-zero-margin", "one-class", "one-per-class", "one-instance")


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("mode", TRIPLET_MODES)
def test_triplet_gradcheck(mode, seed):
    s, t, y = safe_batch(seed, need_tuple_of=2 if mode == "TUPLE" else 1)
    assert boundary_distance(s, y, 0.2) > BOUNDARY_GAP  # the property gradcheck relies on
    assert len(mine_triplets(s, y)) > 0
    s.requires_grad_()
    assert torch.autograd.gradcheck(lambda x: triplet_relation_loss(x, t, y, mode), (s,))


@pytest.mark.parametrize("mode", TRIPLET_MODES)
def test_triplet_gradcheck_other_settings(mode):
    s, t, y = safe_batch(7, margin=0.6)
    assert boundary_distance(s, y, 0.6) > BOUNDARY_GAP
    s.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x: triplet_relation_loss(x, t, y, mode, margin=0.6, tau1=0.5, scale=3.0), (s,)
    )


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("mode", CENTER_MODES)
def test_center_gradcheck(mode, seed):
    g = torch.Generator().manual_seed(seed)
    n, k, d = (int(torch.randint(lo, hi, (1,), generator=g)) for lo, hi in ((3, 9), (4, 7), (2, 5)))
    z = torch.randn(n, k, generator=g, dtype=torch.float64, requires_grad=True)
    f = torch.randn(n, d, 1, generator=g, dtype=torch.float64)
    y = torch.randint(0, k - 1, (n,), generator=g)  # class k - 1 is never present
    centers = torch.randn(k, d, generator=g, dtype=torch.float64) if mode == "GLOBAL" else None
    assert torch.autograd.gradcheck(
        lambda x: local_center_kd_loss(x, f, y, centers, mode, tau2=1.5, teaching_weight=3.0),
        (z,),
    )


@pytest.mark.parametrize("mode", TRIPLET_MODES)
def test_triplet_gradient_matches_loop_differences(mode):
    s, t, y = safe_batch(11, need_tuple_of=2)
    s.requires_grad_()
    triplet_relation_loss(s, t, y, mode).backward()
    want = loop_triplet_numeric_grad(s, t, y, mode)
    np.testing.assert_allclose(s.grad.numpy(), want, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- against the loops


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("mode", TRIPLET_MODES)
def test_triplet_matches_loops_random(mode, seed):
    n = 6 + 3 * seed
    s = rand(n, 2 + seed % 3, 2, seed=seed)
    t = rand(n, 5, seed=100 + seed)
    y = rand_labels(n, 2 + seed % 4, seed=200 + seed)
    margin = [0.2, 0.5, 1.0][seed % 3]
    want = loop_mine(loop_normalize(loop_rows(s)), y.tolist(), margin)
    assert len(want) > 0
    assert [tuple(r) for r in mine_triplets(s, y, margin).tolist()] == want
    assert_close(
        triplet_relation_loss(s, t, y, mode, margin=margin),
        loop_triplet_loss(s, t, y, mode, margin=margin),
    )


@pytest.mark.parametrize("mode", TRIPLET_MODES)
@pytest.mark.parametrize(("name", "s", "t", "y", "margin"), HARD, ids=[h[0] for h in HARD])
def test_triplet_matches_loops_hard(name, s, t, y, margin, mode):
    want = loop_mine(loop_normalize(loop_rows(s)), y.tolist(), margin)
    assert [tuple(r) for r in mine_triplets(s, y, margin).tolist()] == want
    assert (len(want) == 0) == (name in NO_TRIPLETS)
    x = s.clone().requires_grad_()
    loss = triplet_relation_loss(x, t, y, mode, margin=margin)
    assert_close(loss, loop_triplet_loss(s, t, y, mode, margin=margin))
    loss.backward()
    assert torch.isfinite(x.grad).all()
    if not want:
        assert loss.item() == 0.0 and loss.requires_grad
        assert torch.equal(x.grad, torch.zeros_like(x))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("mode", CENTER_MODES)
def test_center_matches_loops(mode, seed):
    n, k = 4 + 5 * seed, 3 + seed
    z = rand(n, k, seed=seed)
    f = rand(n, 2, 3, seed=300 + seed)
    y = rand_labels(n, k, seed=400 + seed)
    centers = rand(k, 6, seed=500 + seed) if mode == "GLOBAL" else None
    got = local_center_kd_loss(z, f, y, centers, mode, tau2=[2.0, 0.7][seed % 2])
    assert_close(got, loop_center_loss(z, f, y, centers, mode, tau2=[2.0, 0.7][seed % 2]))


@pytest.mark.parametrize("mode", CENTER_MODES)
def test_center_matches_loops_hard(mode):
    f = rand(6, 3, seed=600)
    f[3] = 0.0  # zero teacher embedding: uniform teacher distribution for that row
    f[4] = f[1]
    y = torch.tensor([2, 2, 0, 0, 2, 5])
    z = rand(6, 7, seed=601)
    z[5] = z[0]
    centers = rand(7, 3, seed=602) if mode == "GLOBAL" else None
    assert_close(
        local_center_kd_loss(z, f, y, centers, mode), loop_center_loss(z, f, y, centers, mode)
    )
    # a single class in the batch: one-way softmax on both sides, so exactly 0
    x = z.clone().requires_grad_()
    one = local_center_kd_loss(x, f, torch.full((6,), 4), centers, mode)
    one.backward()
    assert one.item() == 0.0 and torch.equal(x.grad, torch.zeros_like(x))


def test_class_centers_match_loops():
    x = rand(30, 2, 2, seed=700)
    y = torch.arange(30) % 4
    want = loop_normalize(loop_means(loop_rows(x), y.tolist(), [0, 1, 2, 3]))
    np.testing.assert_allclose(class_centers(x, y, 4).numpy(), want, rtol=1e-10, atol=1e-14)


# ---------------------------------------------------------------- by hand


def circle(*degrees: float) -> torch.Tensor:
    return tensor([[math.cos(math.radians(a)), math.sin(math.radians(a))] for a in degrees])


def chord_angle(d: float) -> float:
    """Angle (degrees) between unit vectors at distance d: d = 2 sin(angle / 2)."""
    return math.degrees(2 * math.asin(d / 2))


def bern_kl(p: float, q: float) -> float:
    return p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))


def test_triplet_by_hand_one_triplet():
    # x0 at 0 deg, x1 at 90 deg (class 0, d01 = sqrt 2); x2 (class 1) 1.5 from x0 and
    # about 0.125 from x1. Anchor 0: gap 1.5 - sqrt 2 = 0.086 in (0, 0.2]: mined. Anchor 1:
    # gap 0.125 - sqrt 2 < 0. x2 has no positive. Inputs scaled: normalization undoes it.
    s = circle(0, 90, chord_angle(1.5)) * tensor([[2.0], [1.0], [3.0]])
    t = tensor([[3, 0, 0], [0, 1, 0], [0, 0, 0.5]])  # d_T(0, 1) = d_T(0, 2): P_T = 1/2
    y = torch.tensor([0, 0, 1])
    assert mine_triplets(s, y).tolist() == [[0, 1, 2]]
    p_s = 1 / (1 + math.exp(-(1.5 - SQRT2) / 4))
    kl = 0.5 * math.log(0.5 / p_s) + 0.5 * math.log(0.5 / (1 - p_s))
    assert_close(triplet_relation_loss(s, t, y), 1000 / 2 * kl)
    # one negative per tuple: the 2-way softmax is the Bernoulli, without the 1/2
    assert_close(triplet_relation_loss(s, t, y, "TUPLE"), 1000 * kl)


def test_triplet_by_hand_one_tuple_of_two():
    # x2, x3 are the other classes' singletons, 1.5 and 1.55 from x0 on either side; from
    # x1 they are about 0.125 (gap < 0) and 1.99 (gap 0.58 > 0.2): one tuple (0, 1).
    s = circle(0, 90, chord_angle(1.5), -chord_angle(1.55))
    t = tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [-1, 0, 0]])  # d_T: sqrt 2, sqrt 2, 2
    y = torch.tensor([0, 0, 1, 2])
    assert mine_triplets(s, y).tolist() == [[0, 1, 2], [0, 1, 3]]

    def sig(v: float) -> float:
        return 1 / (1 + math.exp(-v / 4))

    triplet = (
        1000
        / 4
        * (bern_kl(sig(0.0), sig(1.5 - SQRT2)) + bern_kl(sig(2 - SQRT2), sig(1.55 - SQRT2)))
    )
    assert_close(triplet_relation_loss(s, t, y), triplet)
    e_s = [math.exp(-d / 4) for d in (SQRT2, 1.5, 1.55)]
    e_t = [math.exp(-d / 4) for d in (SQRT2, SQRT2, 2.0)]
    p_s = [v / sum(e_s) for v in e_s]
    p_t = [v / sum(e_t) for v in e_t]
    tuple_kl = sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s))
    assert_close(triplet_relation_loss(s, t, y, "TUPLE"), 1000 * tuple_kl)


def test_mining_bounds_by_hand():
    # Anchor e1, positive (1/2, 1/2, 1/2, 1/2) at distance 1, negative -e1 at 2: the gap
    # is 1 exactly (sqrt of 1 and 4); the other anchor's gap is sqrt 3 - 1 = 0.73.
    s = tensor([[1, 0, 0, 0], [0.5, 0.5, 0.5, 0.5], [-1, 0, 0, 0]])
    y = torch.tensor([0, 0, 1])
    assert mine_triplets(s, y, 1.0).tolist() == [[0, 1, 2], [1, 0, 2]]  # upper bound inclusive
    assert mine_triplets(s, y, math.nextafter(1.0, 0)).tolist() == [[1, 0, 2]]
    # x0 = (1, 0), x1 = (0, 1) class 0; x2 = (-1, 0) class 1. Anchor 1's gap is
    # d(1, 2) - d(1, 0) = sqrt 2 - sqrt 2, the same rounding twice: 0, never mined.
    s = tensor([[1, 0], [0, 1], [-1, 0]])
    assert mine_triplets(s, y, 10.0).tolist() == [[0, 1, 2]]  # the lower bound is strict
    assert mine_triplets(s, y, 0.0).tolist() == []


def test_center_by_hand():
    # classes 0 and 2 present (K = 3). LOCAL centers: (1, 0) and (0, 1), so the teacher
    # logits are [[2, 0], [0, 1]]; GLOBAL centers (3, 4) -> (0.6, 0.8) and (0, -2) -> (0, -1)
    z = tensor([[1.0, 5.0, -1.0], [0.5, -3.0, 2.0]]).requires_grad_()
    f = tensor([[2.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 2])

    def kl2(t0: float, t1: float, s0: float, s1: float) -> float:
        pt = 1 / (1 + math.exp((t1 - t0) / 2))
        ps = 1 / (1 + math.exp((s1 - s0) / 2))
        return bern_kl(pt, ps)

    local = local_center_kd_loss(z, f, y, mode="LOCAL")
    assert_close(local, 100 * (kl2(2, 0, 1, -1) + kl2(0, 1, 0.5, 2)) / 2)
    centers = tensor([[3.0, 4.0], [0.0, 0.0], [0.0, -2.0]])  # row 1: absent, unfilled is fine
    glob = local_center_kd_loss(z, f, y, centers, tau2=2.0, teaching_weight=7.0)
    assert_close(glob, 7 * (kl2(1.2, 0, 1, -1) + kl2(0.8, -1, 0.5, 2)) / 2)
    local.backward()
    assert torch.equal(z.grad[:, 1], torch.zeros(2, dtype=torch.float64))  # absent class
    assert (z.grad[:, [0, 2]] != 0).all()


def test_class_centers_by_hand():
    x = tensor([[3.0, 0.0], [1.0, 4.0], [-1.0, 0.0], [5.0, 8.0]])
    y = torch.tensor([1, 0, 1, 0])
    # class 0: mean (3, 6) -> (1, 2) / sqrt 5; class 1: mean (1, 0) -> (1, 0)
    want = tensor([[1 / math.sqrt(5), 2 / math.sqrt(5)], [1.0, 0.0]])
    torch.testing.assert_close(class_centers(x, y, 2), want, rtol=1e-12, atol=1e-15)


# ---------------------------------------------------------------- properties


@pytest.mark.parametrize("mode", TRIPLET_MODES)
def test_teacher_gets_no_gradient_triplet(mode):
    s, t, y = safe_batch(21)
    s.requires_grad_()
    t.requires_grad_()
    triplet_relation_loss(s, t, y, mode).backward()
    assert t.grad is None
    assert s.grad is not None and s.grad.abs().sum() > 0


@pytest.mark.parametrize("mode", CENTER_MODES)
def test_teacher_gets_no_gradient_center(mode):
    z = rand(6, 4, seed=30).requires_grad_()
    f = rand(6, 3, seed=31).requires_grad_()
    centers = rand(4, 3, seed=32).requires_grad_() if mode == "GLOBAL" else None
    local_center_kd_loss(z, f, torch.tensor([0, 1, 1, 3, 0, 3]), centers, mode).backward()
    assert f.grad is None and (centers is None or centers.grad is None)
    assert z.grad.abs().sum() > 0


@pytest.mark.parametrize("mode", TRIPLET_MODES)
def test_teacher_that_matches_student_gives_zero(mode):
    s, _, y = safe_batch(22)
    assert triplet_relation_loss(s, s.clone(), y, mode).item() == 0.0
    # per-instance rescaling of the teacher changes nothing after normalization
    factors = torch.linspace(0.5, 4.0, s.shape[0], dtype=torch.float64)
    scaled = s * factors.reshape(-1, *[1] * (s.dim() - 1))
    assert abs(triplet_relation_loss(s, scaled, y, mode).item()) < 1e-10
    assert triplet_relation_loss(s, s.flip(0), y, mode).item() > 1e-6  # other relations


@pytest.mark.parametrize("mode", TRIPLET_MODES)
def test_zero_row_has_zero_gradient(mode):
    s, t, y = HARD[4][1:4]  # the zero-rows batch
    x = s.clone().requires_grad_()
    triplet_relation_loss(x, t, y, mode, margin=1.0).backward()
    assert torch.isfinite(x.grad).all()
    assert torch.equal(x.grad[[2, 5]], torch.zeros_like(x.grad[[2, 5]]))
    assert x.grad.abs().sum() > 0


def test_local_equals_global_with_batch_means():
    z = rand(9, 6, seed=40)
    f = rand(9, 4, seed=41)
    y = torch.tensor([4, 1, 1, 0, 4, 4, 1, 0, 1])
    centers = rand(6, 4, seed=42)  # rows 2, 3, 5 absent: arbitrary
    for c in (0, 1, 4):
        centers[c] = 3.0 * f[y == c].mean(0)  # unnormalized, scaled: normalized inside
    grads = []
    values = []
    for mode, given in (("LOCAL", None), ("GLOBAL", centers)):
        x = z.clone().requires_grad_()
        loss = local_center_kd_loss(x, f, y, given, mode)
        loss.backward()
        values.append(loss)
        grads.append(x.grad)
    torch.testing.assert_close(values[0], values[1], rtol=1e-12, atol=0)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-12, atol=1e-15)
    centers[2] = 0.0  # an absent class's center does not matter
    torch.testing.assert_close(local_center_kd_loss(z, f, y, centers), values[1])
    centers[1] += 1.0  # a present one does
    assert not torch.allclose(local_center_kd_loss(z, f, y, centers), values[1])


def test_unfilled_centers_raise():
    z, f = rand(4, 3, seed=50), rand(4, 2, seed=51)
    centers = rand(3, 2, seed=52)
    centers[1] = 0.0
    with pytest.raises(ValueError, match=r"centers rows \[1\] are all zeros.*not filled"):
        local_center_kd_loss(z, f, torch.tensor([0, 1, 2, 1]), centers)
    local_center_kd_loss(z, f, torch.tensor([0, 2, 2, 0]), centers)  # class 1 absent: fine
    with pytest.raises(ValueError, match=r"mode='GLOBAL' needs centers"):
        local_center_kd_loss(z, f, torch.tensor([0, 2, 2, 0]))
    with pytest.raises(ValueError, match=r"centers rows \[1\]"):
        LocalCenterKDLoss(centers=centers)(z, f, torch.tensor([1, 1, 0, 0]))


def test_modules_match_functions():
    s, t, y = safe_batch(60)
    for mode in TRIPLET_MODES:
        module = TripletRelationLoss(mode, margin=0.3, tau1=2.0, scale=10.0)
        assert "mode=" + mode in repr(module)
        torch.testing.assert_close(
            module(s, t, y), triplet_relation_loss(s, t, y, mode, 0.3, 2.0, 10.0)
        )
    z, f, yc = rand(5, 4, seed=61), rand(5, 3, seed=62), torch.tensor([0, 3, 3, 1, 0])
    centers = rand(4, 3, seed=63)
    module = LocalCenterKDLoss("GLOBAL", tau2=1.5, teaching_weight=2.0)
    module.set_centers(centers)
    centers.zero_()  # the module keeps its own copy
    assert torch.equal(module.state_dict()["centers"], module.centers)
    torch.testing.assert_close(
        module(z, f, yc), local_center_kd_loss(z, f, yc, module.centers, "GLOBAL", 1.5, 2.0)
    )
    local = LocalCenterKDLoss("LOCAL")
    torch.testing.assert_close(local(z, f, yc), local_center_kd_loss(z, f, yc, mode="LOCAL"))


def test_float32_and_mixed_dtypes():
    s, t, y = safe_batch(70)
    got = triplet_relation_loss(s.float(), t, y, "TUPLE")
    assert got.dtype == torch.float32
    torch.testing.assert_close(
        got.double(), triplet_relation_loss(s, t, y, "TUPLE"), rtol=1e-4, atol=1e-6
    )
    z = rand(4, 3, seed=71).float()
    assert local_center_kd_loss(z, rand(4, 2, seed=72), y[:4] % 3, mode="LOCAL").isfinite()


# ---------------------------------------------------------------- bad input


Z4 = torch.zeros(4, 3)
Y4 = torch.tensor([0, 1, 0, 1])


@pytest.mark.parametrize(
    ("call", "pattern"),
    [
        (
            lambda: triplet_relation_loss(Z4, torch.zeros(5, 2), Y4),
            r"student \(4, 3\) and teacher \(5, 2\).*N",
        ),
        (
            lambda: triplet_relation_loss(Z4, Z4, torch.tensor([0, 1])),
            r"labels must have shape \(N,\) = \(4,\).*\(2,\)",
        ),
        (lambda: triplet_relation_loss(Z4, Z4, Y4[:, None]), r"labels must have shape .*\(4, 1\)"),
        (
            lambda: triplet_relation_loss(Z4, Z4, Y4.float()),
            r"labels must have an integer dtype, got torch.float32",
        ),
        (lambda: triplet_relation_loss(Z4, Z4, Y4, margin=-0.1), r"margin must be >= 0, got -0.1"),
        (lambda: triplet_relation_loss(Z4, Z4, Y4, margin=math.nan), r"margin must be >= 0"),
        (lambda: triplet_relation_loss(Z4, Z4, Y4, tau1=0.0), r"tau1 must be > 0, got 0.0"),
        (
            lambda: triplet_relation_loss(Z4, Z4, Y4, mode="tuple"),
            r"mode must be one of \('TRIPLET', 'TUPLE'\)",
        ),
        (
            lambda: triplet_relation_loss(torch.zeros(0, 3), torch.zeros(0, 3), Y4[:0]),
            r"student must have shape \(N, \.\.\.\) with N >= 1",
        ),
        (lambda: triplet_relation_loss(Z4.long(), Z4, Y4), r"student must be floating point"),
        (lambda: mine_triplets(Z4, Y4, margin=-1.0), r"mine_triplets: margin must be >= 0"),
        (lambda: TripletRelationLoss(tau1=-1.0), r"TripletRelationLoss: tau1 must be > 0"),
        (lambda: local_center_kd_loss(Z4, Z4, Y4, mode="LOCAL", tau2=0.0), r"tau2 must be > 0"),
        (
            lambda: local_center_kd_loss(Z4, Z4, Y4, mode="local"),
            r"mode must be one of \('GLOBAL', 'LOCAL'\)",
        ),
        (
            lambda: local_center_kd_loss(Z4, torch.zeros(3, 2), Y4, mode="LOCAL"),
            r"student_logits \(4, 3\) and teacher_embedding \(3, 2\)",
        ),
        (
            lambda: local_center_kd_loss(Z4[:, :, None], Z4, Y4, mode="LOCAL"),
            r"student_logits must have shape \(N, K\), got \(4, 3, 1\)",
        ),
        (
            lambda: local_center_kd_loss(Z4, Z4, torch.tensor([0, 3, 1, 1]), mode="LOCAL"),
            r"labels must lie in \[0, K\) with K = 3.*\[3\]",
        ),
        (
            lambda: local_center_kd_loss(Z4, Z4, torch.tensor([0, -1, 1, 1]), mode="LOCAL"),
            r"\[-1\]",
        ),
        (
            lambda: local_center_kd_loss(Z4, Z4, Y4, torch.ones(4, 3)),
            r"centers \(4, 3\) must be \(K, D\) = \(3, 3\)",
        ),
        (
            lambda: local_center_kd_loss(Z4, torch.zeros(4, 2), Y4, torch.ones(3, 3)),
            r"centers \(3, 3\) must be \(K, D\) = \(3, 2\)",
        ),
        (
            lambda: local_center_kd_loss(Z4, Z4, Y4, torch.ones(3, 3), mode="LOCAL"),
            r"centers are only used by mode='GLOBAL'",
        ),
        (
            lambda: LocalCenterKDLoss("LOCAL", centers=torch.ones(3, 3)),
            r"only used by mode='GLOBAL'",
        ),
        (lambda: LocalCenterKDLoss(tau2=math.nan), r"LocalCenterKDLoss: tau2 must be > 0"),
        (
            lambda: class_centers(Z4, torch.tensor([0, 0, 2, 2]), 4),
            r"class\(es\) \[1, 3\] of num_classes = 4 have no instance",
        ),
        (lambda: class_centers(Z4, Y4, 2), r"class\(es\) \[0, 1\] have a zero mean"),
        (
            lambda: class_centers(Z4, torch.tensor([0, 0, 2, 5]), 4),
            r"labels must lie in \[0, K\) with K = 4.*\[5\]",
        ),
        (lambda: class_centers(Z4, Y4, 0), r"num_classes must be an int >= 1"),
    ],
)
def test_invalid_inputs(call, pattern):
    with pytest.raises(ValueError, match=pattern):
        call()


def test_refilled_imports_nothing_else_of_pyirg():
    """Independence: beyond pyirg's own __init__, only pyirg.torch, its layers (whose
    helpers it shares) and this module load."""
    import subprocess
    import sys

    code = (
        "import sys, pyirg; base = set(sys.modules); import pyirg.torch.refilled; "
        "print(' '.join(sorted(m for m in set(sys.modules) - base if m.startswith('pyirg'))))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["pyirg.torch", "pyirg.torch.layers", "pyirg.torch.refilled"]
