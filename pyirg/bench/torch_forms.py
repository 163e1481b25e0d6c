"""The layers' computation in PyTorch, as a good PyTorch user writes it, timed against ours.

Why a module of its own: it needs nothing but torch, so the portable GPU check
(tools/gpu_bundle.sh) copies it as it is and times the same forms on a GPU machine
that has no pyirg; the tensors' device decides where it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def torch_map(x: Any, target: Any, form: str) -> Callable[[], None]:
    """Map + EuclideanLoss by autograd, as a good PyTorch user writes it.

    ``gram``: ``|x_i|^2 + |x_j|^2 - 2 x_i.x_j`` with one ``addmm``; ``cdist``:
    ``torch.cdist(x, x) ** 2``. ``mse_loss(sum) / 2N`` is EuclideanLoss on an N x N top.
    """
    import torch
    import torch.nn.functional as F

    n = x.shape[0]

    def run() -> None:
        x.grad = None  # what zero_grad(set_to_none=True) does between steps
        if form == "gram":
            sq = (x * x).sum(1)
            d = torch.addmm(sq[:, None] + sq[None, :], x, x.T, alpha=-2).clamp_min(0)
        else:
            d = torch.cdist(x, x).pow(2)
        a = d / d.max()
        (F.mse_loss(a, target, reduction="sum") / (2 * n)).backward()

    return run


def torch_vector(x: Any, y: Any, target: Any) -> Callable[[], None]:
    """Vector + EuclideanLoss by autograd; the 1 x N top makes EuclideanLoss divide by 2."""
    import torch.nn.functional as F

    def run() -> None:
        x.grad = y.grad = None
        d = (x - y).pow(2).sum(1)
        t = d / d.max()
        (F.mse_loss(t, target, reduction="sum") / 2).backward()

    return run
