"""PyTorch reference for the two IRG layers, ``BatchEuclideanMap`` and ``BatchEuclideanVector``.

This module exists to check the Caffe layers against something written independently of
them: the distances come straight from per-pair differences (never from a Gram matrix),
and the exact gradients come from autograd rather than from a hand-derived formula. The
parameter names and values mirror the Caffe layer's ``irg_param`` so one test can sweep
both implementations with the same settings.

``backward="RELEASED"`` reproduces the authors' released backward (normalizer held
constant, and for the map only the ``G[i, j]`` half of each symmetric pair), so paper runs
can be repeated faithfully; ``"EXACT"`` is the true gradient of the forward.

A zero normalizer (every instance identical, or a batch of one) yields a zero output and
zero gradients instead of the NaN/inf the released layers produce.

The direct differences cost O(N^2 * D) memory; fine for a reference and for pooled
features, not meant for large spatial maps.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

NORMALIZE_MODES = ("MAX", "MEAN", "NONE")
BACKWARD_MODES = ("EXACT", "RELEASED")


def check_params(layer: str, normalize: str, squared: bool, backward: str) -> None:
    """Reject unknown modes early, so a typo cannot silently select a default."""
    if normalize not in NORMALIZE_MODES:
        raise ValueError(f"{layer}: normalize must be one of {NORMALIZE_MODES}, got {normalize!r}")
    if backward not in BACKWARD_MODES:
        raise ValueError(f"{layer}: backward must be one of {BACKWARD_MODES}, got {backward!r}")
    if not isinstance(squared, bool):
        raise ValueError(f"{layer}: squared must be a bool, got {squared!r}")


def _flatten(layer: str, arg: str, x: Tensor) -> Tensor:
    """(N, ...) -> (N, D): the layers relate whole instances, whatever their shape."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{layer}: {arg} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 1 or x.shape[0] < 1:
        raise ValueError(
            f"{layer}: {arg} must have shape (N, ...) with N >= 1, got {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise ValueError(f"{layer}: {arg} must be floating point, got {x.dtype}")
    return x.reshape(x.shape[0], -1)


def _safe_sqrt(q: Tensor) -> Tensor:
    """sqrt whose gradient at 0 is 0 (the inner where keeps autograd from seeing 1/0)."""
    positive = q > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, q, torch.ones_like(q))), 0.0)


def _safe_divide(d: Tensor, m: Tensor) -> Tensor:
    """d / m, but 0 with zero gradients when m == 0 (then every d is 0 as well)."""
    positive = m > 0
    return torch.where(positive, d / torch.where(positive, m, torch.ones_like(m)), 0.0)


def _normalizer(d: Tensor, normalize: str) -> Tensor:
    """m of the distances d: (N, N) for the map, (N,) for the vector."""
    if normalize == "MAX":
        # amax splits the gradient evenly among tied maxima, e.g. the pair (k, l), (l, k).
        return torch.amax(d)
    if normalize == "NONE":
        return torch.ones((), dtype=d.dtype, device=d.device)
    if d.dim() == 1:
        return d.mean()
    n = d.shape[0]
    if n < 2:
        return d.sum() * 0.0  # no off-diagonal entries: normalizer 0, output 0
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=d.device)
    return (d * off_diagonal).sum() / (n * (n - 1))


def _distances(diff: Tensor, squared: bool) -> Tensor:
    """Distances of the per-pair differences diff (..., D): (N, N, D) or (N, D)."""
    q = (diff * diff).sum(dim=-1)
    return q if squared else _safe_sqrt(q)


def _relate(diff: Tensor, normalize: str, squared: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(d / m, d, m) for the per-pair differences diff."""
    d = _distances(diff, squared)
    m = _normalizer(d, normalize)
    return _safe_divide(d, m), d, m


def _pairs(x2: Tensor) -> Tensor:
    """diff[i, j] = x_i - x_j, (N, N, D)."""
    return x2[:, None, :] - x2[None, :, :]


def _distance_slope(d: Tensor, m: Tensor, squared: bool) -> Tensor:
    """Factor c with d(d)/dx = c * (x_a - x_b), already divided by the constant m.

    Zero where d == 0 (unsquared) and everywhere when m == 0, so nothing divides by zero.
    """
    if squared:
        c = torch.full_like(d, 2.0)
    else:
        positive = d > 0
        c = torch.where(positive, 1.0 / torch.where(positive, d, torch.ones_like(d)), 0.0)
    return _safe_divide(c, m)


class _ReleasedMap(torch.autograd.Function):
    """Map forward with the authors' one-sided backward (m constant, G[j, i] dropped)."""

    @staticmethod
    def forward(ctx, x2: Tensor, normalize: str, squared: bool) -> Tensor:  # type: ignore[override]
        a, d, m = _relate(_pairs(x2), normalize, squared)
        ctx.save_for_backward(x2, d, m)
        ctx.squared = squared
        return a

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        x2, d, m = ctx.saved_tensors
        coef = grad * _distance_slope(d, m, ctx.squared)  # (N, N)
        return (coef[:, :, None] * _pairs(x2)).sum(dim=1), None, None


class _ReleasedVector(torch.autograd.Function):
    """Vector forward with the authors' backward (m constant, dy = -dx)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, x2: Tensor, y2: Tensor, normalize: str, squared: bool
    ) -> Tensor:
        t, d, m = _relate(x2 - y2, normalize, squared)
        ctx.save_for_backward(x2, y2, d, m)
        ctx.squared = squared
        return t

    @staticmethod
    def backward(  # type: ignore[override]
        ctx, grad: Tensor
    ) -> tuple[Tensor | None, Tensor | None, None, None]:
        x2, y2, d, m = ctx.saved_tensors
        dx = (grad * _distance_slope(d, m, ctx.squared))[:, None] * (x2 - y2)
        return (
            dx if ctx.needs_input_grad[0] else None,
            -dx if ctx.needs_input_grad[1] else None,
            None,
            None,
        )


def batch_euclidean_map(
    x: Tensor, normalize: str = "MAX", squared: bool = True, backward: str = "EXACT"
) -> Tensor:
    """IRG edge matrix (N, N) of the instances in x (N, ...): A[i, j] = d(x_i, x_j) / m."""
    check_params("BatchEuclideanMap", normalize, squared, backward)
    x2 = _flatten("BatchEuclideanMap", "x", x)
    if backward == "RELEASED":
        return _ReleasedMap.apply(x2, normalize, squared)
    return _relate(_pairs(x2), normalize, squared)[0]


def batch_euclidean_vector(
    x: Tensor,
    y: Tensor,
    normalize: str = "MAX",
    squared: bool = True,
    backward: str = "EXACT",
) -> Tensor:
    """IRG transformation vertex part (N,): t_i = d(x_i, y_i) / m."""
    check_params("BatchEuclideanVector", normalize, squared, backward)
    x2 = _flatten("BatchEuclideanVector", "x", x)
    y2 = _flatten("BatchEuclideanVector", "y", y)
    if x2.shape != y2.shape:
        raise ValueError(
            "BatchEuclideanVector: x and y need the same N and the same number of values "
            f"per instance, got x {tuple(x.shape)} and y {tuple(y.shape)}"
        )
    if backward == "RELEASED":
        return _ReleasedVector.apply(x2, y2, normalize, squared)
    return _relate(x2 - y2, normalize, squared)[0]


class _IRGLayer(nn.Module):
    """Holds the irg_param settings, validated once at construction."""

    layer_type = ""

    def __init__(
        self, normalize: str = "MAX", squared: bool = True, backward: str = "EXACT"
    ) -> None:
        super().__init__()
        check_params(self.layer_type, normalize, squared, backward)
        self.normalize = normalize
        self.squared = squared
        self.backward_mode = backward

    def extra_repr(self) -> str:
        return f"normalize={self.normalize}, squared={self.squared}, backward={self.backward_mode}"


class BatchEuclideanMap(_IRGLayer):
    """Module form of :func:`batch_euclidean_map` (IRG edges)."""

    layer_type = "BatchEuclideanMap"

    def forward(self, x: Tensor) -> Tensor:
        return batch_euclidean_map(x, self.normalize, self.squared, self.backward_mode)


class BatchEuclideanVector(_IRGLayer):
    """Module form of :func:`batch_euclidean_vector` (IRG transformation)."""

    layer_type = "BatchEuclideanVector"

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return batch_euclidean_vector(x, y, self.normalize, self.squared, self.backward_mode)
