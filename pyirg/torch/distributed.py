"""The instances of every rank in one batch, with gradients: IRG's graph across ranks.

IRG relates the instances of a batch, so under data parallelism it matters which batch
the graph sees. ``IRGLoss(graph="local")`` builds each rank's graph over its own B
instances (as Caffe's multi-GPU training does); ``graph="global"`` builds one graph over
the N·B instances of all N ranks, with :func:`gather_batch` below.

Why the gradients come out exact: every rank computes the same global graph term L_g
from the gathered instances, so the gradient that reaches rank r's own instances is the
sum over ranks of dL_g/dx_r, N times the single-process gradient; data parallelism
(DDP) then averages the parameter gradients over the N ranks, which divides that by N
again. The per-instance terms (cross entropy, logits) are means over each rank's batch,
and their average over the ranks is the mean over the global batch. So N ranks of batch
B train on exactly the loss and the gradients of one process with batch N·B, as long as
every rank has the same B (checked).

Written on ``torch.distributed`` directly (not on the deprecated
``torch.distributed.nn.functional.all_gather``); the backward all-reduces the whole
gradient and keeps this rank's rows, which works on every backend, gloo included.
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist
from torch import Tensor

#: Seconds this process has spent in gather_batch's collectives (forward gathers and
#: backward all-reduces), so a benchmark can tell the gathers' share of an iteration.
GATHER_SECONDS = [0.0]


def _all_gather(x: Tensor, world: int, group: object | None) -> Tensor:
    start = time.perf_counter()
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.contiguous(), group=group)
    out = torch.cat(parts)
    GATHER_SECONDS[0] += time.perf_counter() - start
    return out


def active(group: object | None = None) -> bool:
    """Whether a process group with more than one rank is set up."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def batch_sizes(x: Tensor, group: object | None = None) -> list[int]:
    """The first-axis size of ``x`` on every rank, in rank order."""
    size = torch.tensor([x.shape[0]], dtype=torch.int64, device=x.device)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size(group))]
    dist.all_gather(sizes, size, group=group)
    return [int(s.item()) for s in sizes]


class _GatherBatch(torch.autograd.Function):
    """All ranks' rows concatenated in rank order; backward: the summed gradient's rows."""

    @staticmethod
    def forward(ctx, x: Tensor, group: object | None) -> Tensor:  # type: ignore[override]
        ctx.group = group
        ctx.rank = dist.get_rank(group)
        ctx.rows = x.shape[0]
        return _all_gather(x, dist.get_world_size(group), group)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        start = time.perf_counter()
        total = grad.contiguous().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=ctx.group)
        GATHER_SECONDS[0] += time.perf_counter() - start
        return total[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows], None


def gather_batch(x: Tensor, what: str, group: object | None = None) -> Tensor:
    """The (N·B, ...) batch of all ranks; gradients flow back to each rank's own rows.

    Refuses ranks of different batch sizes (a last, smaller batch: use a sampler that
    drops it), naming the sizes, since the graph would then not be one of N·B instances.
    Without a process group of two or more ranks, ``x`` itself.
    """
    if not active(group):
        return x
    sizes = batch_sizes(x, group)
    if len(set(sizes)) > 1:
        raise ValueError(
            f"IRGLoss(graph='global'): the ranks hold different batch sizes for {what} "
            f"({', '.join(f'rank {r}: {n}' for r, n in enumerate(sizes))}); give every rank "
            "the same batch (e.g. DistributedSampler with drop_last=True)"
        )
    if not x.requires_grad:
        return _all_gather(x, len(sizes), group)
    return _GatherBatch.apply(x, group)


__all__ = ["GATHER_SECONDS", "active", "batch_sizes", "gather_batch"]
