"""Tests of the PyTorch reference (pyirg.torch): layers, losses and the CIFAR ResNet.

Expected values come from hand arithmetic or from explicit loops written here, never
from the code under test.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pyirg.torch.layers import (
    BatchEuclideanMap,
    BatchEuclideanVector,
    batch_euclidean_map,
    batch_euclidean_vector,
)
from pyirg.torch.losses import IRGLoss
from pyirg.torch.resnet import (
    CaffeBatchNorm2d,
    CifarResNet,
    caffe_name_map,
    resnet_layout,
    stage_transform_pairs,
)

NORMALIZE = ("MAX", "MEAN", "NONE")
SQUARED = (True, False)
MODES = list(itertools.product(NORMALIZE, SQUARED))
SHAPES = ((5, 4), (4, 2, 2, 2))


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


# ---------------------------------------------------------------- loop references


def loop_distances(x: np.ndarray, squared: bool) -> np.ndarray:
    n = x.shape[0]
    d = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            q = float(np.sum((x[i] - x[j]) ** 2))
            d[i, j] = q if squared else math.sqrt(q)
    return d


def loop_map_normalizer(d: np.ndarray, normalize: str) -> float:
    n = d.shape[0]
    if normalize == "MAX":
        return float(d.max())
    if normalize == "MEAN":
        total = sum(d[i, j] for i in range(n) for j in range(n) if i != j)
        return total / (n * (n - 1)) if n > 1 else 0.0
    return 1.0


def loop_slope(diff: np.ndarray, dist: float, squared: bool) -> np.ndarray:
    """Derivative of the distance with respect to its first point."""
    if squared:
        return 2.0 * diff
    return diff / dist if dist > 0 else np.zeros_like(diff)


def loop_released_map_grad(
    x: np.ndarray, g: np.ndarray, normalize: str, squared: bool
) -> np.ndarray:
    """The authors' one-sided backward: dx_i = sum_j G_ij * dd_ij/dx_i / m, m constant."""
    x = x.reshape(x.shape[0], -1)
    d = loop_distances(x, squared)
    m = loop_map_normalizer(d, normalize)
    dx = np.zeros_like(x)
    if m == 0:
        return dx
    for i in range(x.shape[0]):
        for j in range(x.shape[0]):
            dx[i] += g[i, j] * loop_slope(x[i] - x[j], d[i, j], squared) / m
    return dx


def loop_released_vector_grad(
    x: np.ndarray, y: np.ndarray, g: np.ndarray, normalize: str, squared: bool
) -> tuple[np.ndarray, np.ndarray]:
    x = x.reshape(x.shape[0], -1)
    y = y.reshape(y.shape[0], -1)
    n = x.shape[0]
    d = np.array([loop_distances(np.stack([x[i], y[i]]), squared)[0, 1] for i in range(n)])
    m = {"MAX": d.max(), "MEAN": d.mean(), "NONE": 1.0}[normalize]
    dx = np.zeros_like(x)
    if m > 0:
        for i in range(n):
            dx[i] = g[i] * loop_slope(x[i] - y[i], d[i], squared) / m
    return dx, -dx


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(("normalize", "squared"), MODES)
def test_map_exact_gradcheck(shape, normalize, squared):
    x = rand(*shape, seed=1).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda t: batch_euclidean_map(t, normalize, squared, "EXACT"), (x,)
    )


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(("normalize", "squared"), MODES)
def test_vector_exact_gradcheck(shape, normalize, squared):
    x = rand(*shape, seed=2).requires_grad_()
    y = rand(*shape, seed=3).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b: batch_euclidean_vector(a, b, normalize, squared, "EXACT"), (x, y)
    )


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(("normalize", "squared"), MODES)
def test_map_released_matches_loop(shape, normalize, squared):
    x = rand(*shape, seed=4).requires_grad_()
    n = shape[0]
    g = rand(n, n, seed=5)  # not symmetric: the dropped G[j, i] half must stay dropped
    batch_euclidean_map(x, normalize, squared, "RELEASED").backward(g)
    want = loop_released_map_grad(x.detach().numpy(), g.numpy(), normalize, squared)
    np.testing.assert_allclose(x.grad.reshape(n, -1).numpy(), want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(("normalize", "squared"), MODES)
def test_vector_released_matches_loop(shape, normalize, squared):
    x = rand(*shape, seed=6).requires_grad_()
    y = rand(*shape, seed=7).requires_grad_()
    g = rand(shape[0], seed=8)
    batch_euclidean_vector(x, y, normalize, squared, "RELEASED").backward(g)
    want_x, want_y = loop_released_vector_grad(
        x.detach().numpy(), y.detach().numpy(), g.numpy(), normalize, squared
    )
    n = shape[0]
    np.testing.assert_allclose(x.grad.reshape(n, -1).numpy(), want_x, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(y.grad.reshape(n, -1).numpy(), want_y, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("squared", SQUARED)
def test_released_map_is_half_of_constant_normalizer_gradient(squared):
    """The notes' claim: symmetric G, MAX -> released = 1/2 of the m-constant gradient."""
    x = rand(6, 3, seed=9).requires_grad_()
    g = rand(6, 6, seed=10)
    g = g + g.T
    batch_euclidean_map(x, "MAX", squared, "RELEASED").backward(g)
    released = x.grad.clone()

    x.grad = None
    diff = x[:, None, :] - x[None, :, :]
    q = (diff * diff).sum(2)
    d = q if squared else torch.sqrt(q + torch.eye(6, dtype=q.dtype)) * (1 - torch.eye(6))
    (d / d.max().detach() * g).sum().backward()
    torch.testing.assert_close(released, 0.5 * x.grad)

    x.grad = None
    batch_euclidean_map(x, "MAX", squared, "EXACT").backward(g)
    assert not torch.allclose(released, 0.5 * x.grad)  # the exact one also moves m


def test_released_vector_with_constant_normalizer_is_exact():
    x, y = rand(5, 3, seed=11).requires_grad_(), rand(5, 3, seed=12).requires_grad_()
    g = rand(5, seed=13)
    grads = []
    for mode in ("EXACT", "RELEASED"):
        x.grad = y.grad = None
        batch_euclidean_vector(x, y, "NONE", True, mode).backward(g)
        grads.append((x.grad.clone(), y.grad.clone()))
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize(("normalize", "squared"), MODES)
def test_released_forward_equals_exact(normalize, squared):
    x = rand(5, 2, 2, seed=14)
    y = rand(5, 2, 2, seed=15)
    torch.testing.assert_close(
        batch_euclidean_map(x, normalize, squared, "RELEASED"),
        batch_euclidean_map(x, normalize, squared, "EXACT"),
    )
    torch.testing.assert_close(
        batch_euclidean_vector(x, y, normalize, squared, "RELEASED"),
        batch_euclidean_vector(x, y, normalize, squared, "EXACT"),
    )


# ---------------------------------------------------------------- forward by hand


POINTS = torch.tensor([[0.0], [1.0], [3.0]], dtype=torch.float64)  # pair distances 1, 3, 2


@pytest.mark.parametrize(
    ("normalize", "squared", "expected"),
    [
        # squared distances 1 (0-1), 9 (0-3), 4 (1-3)
        ("MAX", True, [[0, 1 / 9, 1], [1 / 9, 0, 4 / 9], [1, 4 / 9, 0]]),
        # off-diagonal mean (2 * 14) / 6 = 14 / 3
        ("MEAN", True, [[0, 3 / 14, 27 / 14], [3 / 14, 0, 12 / 14], [27 / 14, 12 / 14, 0]]),
        ("NONE", True, [[0, 1, 9], [1, 0, 4], [9, 4, 0]]),
        ("MAX", False, [[0, 1 / 3, 1], [1 / 3, 0, 2 / 3], [1, 2 / 3, 0]]),
        # off-diagonal mean (2 * 6) / 6 = 2
        ("MEAN", False, [[0, 0.5, 1.5], [0.5, 0, 1], [1.5, 1, 0]]),
        ("NONE", False, [[0, 1, 3], [1, 0, 2], [3, 2, 0]]),
    ],
)
def test_map_forward_by_hand(normalize, squared, expected):
    got = batch_euclidean_map(POINTS, normalize, squared)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64))
    module = BatchEuclideanMap(normalize, squared)
    torch.testing.assert_close(module(POINTS), got)


@pytest.mark.parametrize(
    ("normalize", "squared", "expected"),
    [
        # differences (0, -1), (1, 1), (3, -4): squared norms 1, 2, 25
        ("MAX", True, [1 / 25, 2 / 25, 1]),
        ("MEAN", True, [3 / 28, 6 / 28, 75 / 28]),  # mean 28 / 3
        ("NONE", True, [1, 2, 25]),
        ("MAX", False, [1 / 5, math.sqrt(2) / 5, 1]),
        ("NONE", False, [1, math.sqrt(2), 5]),
    ],
)
def test_vector_forward_by_hand(normalize, squared, expected):
    x = torch.tensor([[0.0, 0.0], [1.0, 1.0], [3.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([[0.0, 1.0], [0.0, 0.0], [0.0, 4.0]], dtype=torch.float64)
    got = batch_euclidean_vector(x, y, normalize, squared)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64))
    torch.testing.assert_close(BatchEuclideanVector(normalize, squared)(x, y), got)


def test_vector_accepts_equal_sizes_in_different_shapes():
    x = rand(3, 4, 1, 1, seed=16)
    y = x.reshape(3, 4) + 1.0
    torch.testing.assert_close(
        batch_euclidean_vector(x, y, "NONE"), torch.full((3,), 4.0, dtype=torch.float64)
    )


# ---------------------------------------------------------------- zero normalizer


ALL_MODES = list(itertools.product(NORMALIZE, SQUARED, ("EXACT", "RELEASED")))


@pytest.mark.parametrize(("normalize", "squared", "backward"), ALL_MODES)
@pytest.mark.parametrize("n", [4, 1])
def test_map_zero_normalizer(n, normalize, squared, backward):
    x = torch.zeros(n, 3, dtype=torch.float64, requires_grad=True)
    a = batch_euclidean_map(x, normalize, squared, backward)
    assert torch.equal(a, torch.zeros(n, n, dtype=torch.float64))
    a.backward(torch.ones_like(a))
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_map_single_instance_is_zero_whatever_its_value():
    x = rand(1, 5, seed=17).requires_grad_()
    for normalize in NORMALIZE:
        a = batch_euclidean_map(x, normalize)
        assert torch.equal(a, torch.zeros(1, 1, dtype=torch.float64))
        a.sum().backward()
        assert torch.equal(x.grad, torch.zeros_like(x))
        x.grad = None


@pytest.mark.parametrize(("normalize", "squared", "backward"), ALL_MODES)
def test_vector_zero_normalizer(normalize, squared, backward):
    x = torch.ones(4, 2, 2, dtype=torch.float64, requires_grad=True)
    y = torch.ones(4, 2, 2, dtype=torch.float64, requires_grad=True)
    t = batch_euclidean_vector(x, y, normalize, squared, backward)
    assert torch.equal(t, torch.zeros(4, dtype=torch.float64))
    t.backward(torch.ones_like(t))
    assert torch.equal(x.grad, torch.zeros_like(x))
    assert torch.equal(y.grad, torch.zeros_like(y))


@pytest.mark.parametrize("backward", ["EXACT", "RELEASED"])
@pytest.mark.parametrize("normalize", NORMALIZE)
def test_duplicates_unsquared_give_finite_gradients(normalize, backward):
    x = rand(5, 3, seed=18)
    x[3] = x[1]
    x.requires_grad_()
    a = batch_euclidean_map(x, normalize, False, backward)
    assert a[1, 3] == 0 and a[3, 1] == 0
    a.backward(rand(5, 5, seed=19))
    assert torch.isfinite(x.grad).all()

    y = x.detach() + 1.0
    y[2] = x[2].detach()  # instance 2 does not move: d_2 = 0
    y.requires_grad_()
    x.grad = None
    t = batch_euclidean_vector(x, y, normalize, False, backward)
    t.backward(rand(5, seed=20))
    assert torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all()


# ---------------------------------------------------------------- bad input


def test_vector_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"BatchEuclideanVector.*\(4, 3\).*\(4, 2\)"):
        batch_euclidean_vector(torch.zeros(4, 3), torch.zeros(4, 2))
    with pytest.raises(ValueError, match=r"\(4, 3\).*\(5, 3\)"):
        batch_euclidean_vector(torch.zeros(4, 3), torch.zeros(5, 3))


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"normalize": "max"}, r"normalize must be one of \('MAX', 'MEAN', 'NONE'\).*'max'"),
        ({"backward": "exact"}, r"backward must be one of \('EXACT', 'RELEASED'\).*'exact'"),
        ({"squared": 1}, r"squared must be a bool"),
    ],
)
def test_invalid_parameters(kwargs, pattern):
    x = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="BatchEuclideanMap: " + pattern):
        batch_euclidean_map(x, **kwargs)
    with pytest.raises(ValueError, match="BatchEuclideanMap: " + pattern):
        BatchEuclideanMap(**kwargs)
    with pytest.raises(ValueError, match="BatchEuclideanVector: " + pattern):
        batch_euclidean_vector(x, x, **kwargs)
    with pytest.raises(ValueError, match="BatchEuclideanVector: " + pattern):
        BatchEuclideanVector(**kwargs)


def test_invalid_inputs():
    with pytest.raises(ValueError, match=r"BatchEuclideanMap: x .*N >= 1.*\(0, 3\)"):
        batch_euclidean_map(torch.zeros(0, 3))
    with pytest.raises(ValueError, match=r"got \(\)"):
        batch_euclidean_map(torch.tensor(1.0))
    with pytest.raises(ValueError, match="floating point"):
        batch_euclidean_map(torch.zeros(3, 2, dtype=torch.long))


# ---------------------------------------------------------------- IRGLoss


def make_feats(seed: int, width: int, n: int = 6) -> dict[str, torch.Tensor]:
    return {
        "Eltwise1": rand(n, width, 4, 4, seed=seed).requires_grad_(),
        "Eltwise3": rand(n, width, 4, 4, seed=seed + 1).requires_grad_(),
        "Eltwise4": rand(n, 2 * width, 2, 2, seed=seed + 2).requires_grad_(),
        "Pooling1": rand(n, 2 * width, seed=seed + 3).requires_grad_(),
        "logits": rand(n, 10, seed=seed + 4).requires_grad_(),
    }


LABELS = torch.tensor([0, 1, 2, 3, 4, 9])


def test_irg_loss_terms_match_hand_composition():
    s, t = make_feats(30, 2), make_feats(40, 4)
    loss = IRGLoss(
        gt_weight=1.0,
        logits_weight=0.5,
        edge_weight=0.25,
        transform_weight=0.125,
        edge_layers=("Pooling1", "Eltwise3"),
        transform_pairs=(("Eltwise3", "Eltwise1"),),
    )
    out = loss(s, t, LABELS)
    n = 6

    def euclid(a, b, num):
        return ((a - b) ** 2).sum() / (2 * num)

    gt = F.cross_entropy(s["logits"], LABELS)
    logits = euclid(s["logits"], t["logits"], n)
    edges = sum(
        euclid(batch_euclidean_map(s[k]), batch_euclidean_map(t[k]), n)
        for k in ("Pooling1", "Eltwise3")
    )
    transform = euclid(
        batch_euclidean_vector(s["Eltwise3"].mean((2, 3)), s["Eltwise1"].mean((2, 3))),
        batch_euclidean_vector(t["Eltwise3"].mean((2, 3)), t["Eltwise1"].mean((2, 3))),
        1,
    )
    expected = {"gt": gt, "logits": logits, "edges": edges, "transform": transform}
    assert set(out) == {"gt", "logits", "edges", "transform", "total"}
    for key, value in expected.items():
        torch.testing.assert_close(out[key], value)
    total = gt + 0.5 * logits + 0.25 * edges + 0.125 * transform
    torch.testing.assert_close(out["total"], total)

    out["total"].backward()
    assert all(v.grad is None for v in t.values())  # the teacher is detached
    assert all(s[k].grad is not None for k in ("logits", "Pooling1", "Eltwise1", "Eltwise3"))


def test_irg_loss_zero_weight_skips_term():
    s, t = make_feats(50, 2), make_feats(60, 4)
    del s["Pooling1"], t["Pooling1"]  # computing the edge term would fail on the missing key
    loss = IRGLoss(gt_weight=0.0, logits_weight=1.0, edge_weight=0.0, edge_layers=("Pooling1",))
    out = loss(s, t)  # no labels needed when gt is skipped
    assert set(out) == {"logits", "total"}
    torch.testing.assert_close(out["total"], out["logits"])


def test_irg_loss_teacher_pairs_and_errors():
    s, t = make_feats(70, 2), make_feats(80, 4)
    t["Eltwise6"] = t.pop("Eltwise3")
    loss = IRGLoss(
        gt_weight=0.0,
        transform_weight=1.0,
        transform_pairs=(("Eltwise3", "Eltwise1"),),
        teacher_transform_pairs=(("Eltwise6", "Eltwise1"),),
    )
    assert set(loss(s, t)) == {"transform", "total"}

    bad = IRGLoss(gt_weight=0.0, transform_weight=1.0, transform_pairs=(("Eltwise4", "Eltwise1"),))
    with pytest.raises(
        ValueError, match=r"'Eltwise4' \(6, 4\) and 'Eltwise1' \(6, 2\).*same channel count"
    ):
        bad(s, make_feats(80, 4))
    with pytest.raises(ValueError, match="edge_layers is empty"):
        IRGLoss(edge_weight=1.0)
    with pytest.raises(ValueError, match="transform_pairs is empty"):
        IRGLoss(transform_weight=1.0)
    with pytest.raises(ValueError, match=r"student features have no 'Eltwise9'"):
        IRGLoss(edge_weight=1.0, edge_layers=("Eltwise9",))(s, t, LABELS)
    with pytest.raises(ValueError, match="labels"):
        IRGLoss()(s, t)
    with pytest.raises(ValueError, match="IRGLoss: normalize"):
        IRGLoss(normalize="min")


def test_irg_loss_methods():
    irg = IRGLoss.from_method("IRG")
    assert irg.weights == {"gt": 1.0, "logits": 0.05, "edges": 0.005, "transform": 0.0}
    assert irg.edge_layers == ("Pooling1",)
    mtk = IRGLoss.from_method(
        "MTK", transform_pairs=[("Eltwise3", "Eltwise1")], backward="RELEASED"
    )
    assert mtk.weights == {"gt": 1.0, "logits": 0.05, "edges": 0.005, "transform": 0.005}
    assert mtk.backward_mode == "RELEASED"
    irgt = IRGLoss.from_method("IRG-t", transform_pairs=[("Eltwise3", "Eltwise1")])
    assert irgt.weights == {"gt": 1.0, "logits": 0.0, "edges": 0.0, "transform": 0.005}
    with pytest.raises(ValueError, match="transform_pairs is empty"):
        IRGLoss.from_method("MTK")
    with pytest.raises(ValueError, match=r"method must be one of \('IRG', 'IRG-t', 'MTK'\)"):
        IRGLoss.from_method("KD")


# ---------------------------------------------------------------- CifarResNet


@pytest.mark.parametrize("width", [1.0, 0.5, 0.25])
@pytest.mark.parametrize("depth", [8, 14, 20])
def test_resnet_shapes_and_names(depth, width):
    layout = resnet_layout(depth, width, num_classes=7)
    model = CifarResNet(layout)
    logits, feats = model(torch.randn(2, 3, 16, 16), return_features=True)
    assert logits.shape == (2, 7)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == len(layout.units()) == depth + 1  # stem, 2 per block, 2 projections
    n_blocks = 3 * (depth - 2) // 6
    names = set(model.layers)
    for k in range(1, len(layout.units()) + 1):
        assert {f"Convolution{k}", f"BatchNorm{k}", f"Scale{k}"} <= names
    eltwise = {f"Eltwise{k}" for k in range(1, n_blocks + 1)}
    assert eltwise <= names and {"Pooling1", "InnerProduct1"} <= names
    assert set(feats) == eltwise | {"Pooling1", "logits"}
    assert feats["Pooling1"].shape == (2, layout.channels[2])
    torch.testing.assert_close(feats["Pooling1"], feats[f"Eltwise{n_blocks}"].mean((2, 3)))
    assert all(feats[k].min() >= 0 for k in eltwise)  # taken after the in-place ReLU
    assert feats["logits"] is logits


def test_resnet20_numbering():
    model = CifarResNet(resnet_layout(20))
    names = set(model.layers)
    assert {f"Convolution{k}" for k in range(1, 22)} <= names
    assert "Convolution22" not in names
    assert {f"Eltwise{k}" for k in range(1, 10)} <= names and "Eltwise10" not in names
    assert isinstance(model.layers["Convolution8"], torch.nn.Conv2d)
    assert model.layers["Convolution8"].stride == (2, 2)  # stage 2 projection
    assert model.layers["Convolution8"].kernel_size == (1, 1)
    assert stage_transform_pairs(model.layout) == [
        ("Eltwise3", "Eltwise1"),
        ("Eltwise6", "Eltwise4"),
        ("Pooling1", "Eltwise7"),
    ]


def test_resnet14_numbered_as_20_has_gaps():
    model = CifarResNet(resnet_layout(14, 0.5, numbering_depth=20))
    names = set(model.layers)
    assert "Convolution4" not in names and "Convolution6" in names
    _, feats = model(torch.randn(2, 3, 8, 8), return_features=True)
    assert {k for k in feats if k.startswith("Eltwise")} == {
        f"Eltwise{k}" for k in (1, 3, 4, 5, 7, 9)
    }
    assert stage_transform_pairs(model.layout) == [
        ("Eltwise3", "Eltwise1"),
        ("Eltwise5", "Eltwise4"),
        ("Pooling1", "Eltwise7"),
    ]
    with pytest.raises(ValueError, match="one block"):
        stage_transform_pairs(resnet_layout(8))


def test_caffe_name_map():
    model = CifarResNet(resnet_layout(8, 0.25))
    mapping = caffe_name_map(model)
    state = model.state_dict()
    unmapped = {k for k in state if k not in mapping}
    assert all(k.endswith(("num_batches_tracked", "caffe_factor")) for k in unmapped)
    assert set(mapping) <= set(state)
    assert mapping["layers.Convolution1.weight"] == ("Convolution1", 0)
    assert mapping["layers.Convolution1.bias"] == ("Convolution1", 1)
    assert mapping["layers.BatchNorm3.running_mean"] == ("BatchNorm3", 0)
    assert mapping["layers.BatchNorm3.running_var"] == ("BatchNorm3", 1)
    assert mapping["layers.Scale3.weight"] == ("Scale3", 0)
    assert mapping["layers.Scale3.bias"] == ("Scale3", 1)
    assert mapping["layers.InnerProduct1.weight"] == ("InnerProduct1", 0)
    assert state["layers.InnerProduct1.weight"].shape == (10, 16)  # Caffe (out, in)
    bn = model.layers["BatchNorm3"]
    assert isinstance(bn, torch.nn.BatchNorm2d) and not bn.affine and bn.eps == 1e-5


def test_batchnorm_follows_caffe_moving_average():
    """s <- 0.999 s + stat, f <- 0.999 f + 1, estimate s / f (unbiased batch variance)."""
    bn = CaffeBatchNorm2d(3).double()
    s_mean = s_var = torch.zeros(3, dtype=torch.float64)
    f = 0.0
    for seed in range(4):
        x = rand(4, 3, 2, 2, seed=100 + seed) * (seed + 1) + seed
        bn(x)
        flat = x.transpose(0, 1).reshape(3, -1)
        s_mean = 0.999 * s_mean + flat.mean(1)
        s_var = 0.999 * s_var + flat.var(1, unbiased=True)
        f = 0.999 * f + 1.0
        torch.testing.assert_close(bn.running_mean, s_mean / f)
        torch.testing.assert_close(bn.running_var, s_var / f)
    bn.eval()
    x = rand(2, 3, 2, 2, seed=200)
    expected = (x - (s_mean / f).view(1, 3, 1, 1)) / torch.sqrt((s_var / f).view(1, 3, 1, 1) + 1e-5)
    torch.testing.assert_close(bn(x), expected)


# ------------------------------------------- the reference's description against pyirg's
#
# pyirg.torch describes the ResNets and chooses the IRG layers itself; pyirg.arch and
# pyirg.distill do the same for the Caffe nets. These tests hold the two against each other
# and both against tables written here from the paper and the authors' prototxts, so a bug
# on either side fails them (with only the first, a bug shared by both would pass).

#: Every convolution of ResNet-20 in network order: (name, in, out, kernel, stride). A 3x3
#: stem to 16 channels; 3 stages of 3 basic blocks (two 3x3 convolutions) with 16, 32, 64
#: channels; the first block of stages 2 and 3 strides by 2 and has a strided 1x1
#: projection, numbered before that block's convolutions.
RESNET20_CONVS = [
    ("Convolution1", 3, 16, 3, 1),
    *((f"Convolution{k}", 16, 16, 3, 1) for k in range(2, 8)),
    ("Convolution8", 16, 32, 1, 2),
    ("Convolution9", 16, 32, 3, 2),
    *((f"Convolution{k}", 32, 32, 3, 1) for k in range(10, 15)),
    ("Convolution15", 32, 64, 1, 2),
    ("Convolution16", 32, 64, 3, 2),
    *((f"Convolution{k}", 64, 64, 3, 1) for k in range(17, 22)),
]
#: The IRG-t pairs of the authors' IRG_Transformation.prototxt (bem13, bem46, bem79) for
#: the ResNet-20 teacher and their ResNet-14 student numbered as ResNet-20.
AUTHORS_PAIRS_20 = [("Eltwise3", "Eltwise1"), ("Eltwise6", "Eltwise4"), ("Pooling1", "Eltwise7")]
AUTHORS_PAIRS_14_UNDER_20 = [
    ("Eltwise3", "Eltwise1"),
    ("Eltwise5", "Eltwise4"),
    ("Pooling1", "Eltwise7"),
]
#: (depth, width, classes, input channels, numbering depth, kept blocks).
NETS = [
    *((d, w, 10, 3, None, None) for d in (8, 14, 20, 32, 56) for w in (1.0, 0.5, 0.375, 0.25)),
    (14, 0.5, 10, 3, 20, None),
    (14, 0.25, 100, 1, 20, ((0, 1), (0, 2), (0, 1))),
    (8, 0.25, 7, 1, 14, None),
    (8, 0.5, 10, 3, 20, None),
    (20, 0.5, 10, 3, 32, ((0, 1, 4), (0, 2, 3), (0, 1, 2))),
]


CHOICES = ("depth", "width", "num_classes", "in_channels", "numbering_depth", "kept_blocks")
SHAPE = ("in_channels", "out_channels", "kernel", "stride", "pad")


def values(obj, names) -> tuple | None:
    return None if obj is None else tuple(getattr(obj, n) for n in names)


def reference_rows(layout) -> dict:
    """Everything the reference's description decides, in plain values."""
    unit = ("conv", "bn", "scale", "relu_name", *SHAPE)
    return {
        "choices": values(layout, CHOICES),
        "channels": layout.channels,
        "stem": values(layout.stem, unit),
        "blocks": [
            (b.stage, b.position, b.eltwise, b.relu_name)
            + tuple(values(u, unit) for u in (b.shortcut, b.conv_a, b.conv_b))
            for b in layout.blocks
        ],
        "top": (layout.pool, layout.fc),
    }


def arch_rows(spec) -> dict:
    """The same values from a pyirg.arch spec (its own field names)."""
    unit = ("conv", "bn", "scale", "relu", *SHAPE)
    return {
        "choices": values(spec, CHOICES),
        "channels": spec.widths,
        "stem": values(spec.stem, unit),
        "blocks": [
            (b.stage, b.index, b.eltwise, b.relu)
            + tuple(values(u, unit) for u in (b.proj, b.conv_a, b.conv_b))
            for b in spec.blocks
        ],
        "top": (spec.pool, spec.fc),
    }


def model_convs(model: CifarResNet) -> list[tuple[str, int, int, int, int]]:
    """The convolutions the built model really holds, checked for 'same' padding."""
    out = []
    for name, m in model.layers.items():
        if isinstance(m, torch.nn.Conv2d):
            assert (
                m.padding == (m.kernel_size[0] // 2,) * 2 and m.kernel_size[0] == m.kernel_size[1]
            )
            out.append((name, m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0]))
    return out


def test_resnet20_convolutions_are_the_papers_on_both_sides():
    from pyirg.arch import cifar_resnet

    layout, spec = resnet_layout(20), cifar_resnet(20)
    rows = [(u.conv, u.in_channels, u.out_channels, u.kernel, u.stride) for u in layout.units()]
    assert rows == RESNET20_CONVS
    assert [(c.conv, c.in_channels, c.out_channels, c.kernel, c.stride) for c in spec.convs()] == (
        RESNET20_CONVS
    )
    assert model_convs(CifarResNet(layout)) == RESNET20_CONVS
    assert model_convs(CifarResNet(spec)) == RESNET20_CONVS  # built from arch's choices only
    assert [b.eltwise for b in layout.blocks] == [f"Eltwise{k}" for k in range(1, 10)]
    assert [b.eltwise for b in spec.blocks] == [f"Eltwise{k}" for k in range(1, 10)]


@pytest.mark.parametrize("net", NETS, ids=str)
def test_reference_and_arch_describe_the_same_nets(net):
    from pyirg.arch import cifar_resnet

    spec = cifar_resnet(*net)
    assert reference_rows(resnet_layout(*net)) == arch_rows(spec)
    assert reference_rows(CifarResNet(spec).layout) == arch_rows(spec)


def test_the_comparison_sees_a_one_field_difference():
    """A wrong stride (or name) on the arch side must make the descriptions differ."""
    import dataclasses

    from pyirg.arch import cifar_resnet

    spec = cifar_resnet(20)
    block = spec.blocks[3]
    wrong_stride = dataclasses.replace(block, conv_a=dataclasses.replace(block.conv_a, stride=1))
    wrong_name = dataclasses.replace(block, eltwise="Eltwise5")
    for bad in (wrong_stride, wrong_name):
        blocks = spec.blocks[:3] + (bad,) + spec.blocks[4:]
        assert reference_rows(resnet_layout(20)) != arch_rows(
            dataclasses.replace(spec, blocks=blocks)
        )


def test_the_reference_imports_nothing_else_of_pyirg():
    """Independence: beyond the package's own __init__, only pyirg.torch.* is loaded."""
    import subprocess
    import sys

    code = (
        "import sys, pyirg; base = set(sys.modules); "
        "import pyirg.torch.layers, pyirg.torch.losses, pyirg.torch.resnet; "
        "print(' '.join(sorted(m for m in set(sys.modules) - base if m.startswith('pyirg'))))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    loaded = proc.stdout.split()
    assert "pyirg.torch.resnet" in loaded
    assert all(m == "pyirg.torch" or m.startswith("pyirg.torch.") for m in loaded), loaded


@pytest.mark.parametrize("net", [n for n in NETS if n[0] >= 14], ids=str)
def test_reference_pairs_are_distills(net):
    pytest.importorskip("caffe")
    from pyirg.arch import cifar_resnet
    from pyirg.distill import stage_pairs

    assert stage_transform_pairs(resnet_layout(*net)) == list(stage_pairs(cifar_resnet(*net)))


def test_reference_pairs_are_the_authors():
    assert stage_transform_pairs(resnet_layout(20)) == AUTHORS_PAIRS_20
    student = resnet_layout(14, 0.5, numbering_depth=20)
    assert stage_transform_pairs(student) == AUTHORS_PAIRS_14_UNDER_20
    loss = IRGLoss.from_networks("IRG-t", resnet_layout(20), student)
    assert list(loss.teacher_transform_pairs) == AUTHORS_PAIRS_20
    assert list(loss.transform_pairs) == AUTHORS_PAIRS_14_UNDER_20
    assert IRGLoss.from_networks("IRG", resnet_layout(20), student).edge_layers == ("Pooling1",)


@pytest.mark.parametrize("method", ["IRG", "IRG-t", "MTK"])
def test_reference_losses_choose_what_distill_chooses(method):
    """Same weights, edge layers and transformation pairs (teacher's and student's)."""
    pytest.importorskip("caffe")
    from pyirg.arch import cifar_resnet
    from pyirg.distill import DistillConfig

    teacher, student = (20, 1.0), (14, 0.5, 10, 3, 20)
    cfg = DistillConfig.for_method(method, cifar_resnet(*teacher), cifar_resnet(*student))
    loss = IRGLoss.from_networks(method, resnet_layout(*teacher), resnet_layout(*student))
    assert loss.weights == {
        "gt": cfg.gt, "logits": cfg.logits, "edges": cfg.edges, "transform": cfg.transform
    }  # fmt: skip
    assert loss.edge_layers == (cfg.edge_layers if cfg.edges else ("Pooling1",))
    t_pairs, s_pairs = cfg.pairs() if cfg.transform else ((), ())
    assert loss.teacher_transform_pairs == tuple(t_pairs)
    assert loss.transform_pairs == tuple(s_pairs)
