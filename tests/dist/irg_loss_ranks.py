"""Run by tests/test_torch_distributed.py under torchrun (gloo, CPU, float64).

Every rank draws the same global batch, keeps its own rows, and computes IRGLoss with
``graph`` = argv[1] for every method and normalize mode; rank 0 then compares with one
process: ``global`` must give the loss and gradients of the concatenated batch,
``local`` the mean of the per-shard losses. Writes the largest relative errors to the
JSON file argv[2].
"""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist

from pyirg.torch.losses import METHODS, IRGLoss

B, C, K = 5, 7, 4  # instances per rank, feature width, classes
NAMES = ("logits", "Pooling1", "a", "b")


def batch(seed: int, n: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        name: torch.randn(n, K if name == "logits" else C, generator=g, dtype=torch.float64)
        for name in NAMES
    }


def loss_of(graph: str, method: str, normalize: str) -> IRGLoss:
    return IRGLoss.from_method(
        method, edge_layers=("Pooling1",), transform_pairs=[("a", "b")],
        normalize=normalize, graph=graph,
    )  # fmt: skip


def grad_of(x: torch.Tensor) -> torch.Tensor:
    """x's gradient, zero where the loss does not use x (e.g. IRG-t's pooled feature)."""
    return x.grad if x.grad is not None else torch.zeros_like(x)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest difference relative to the largest entry (0 when both are all zero)."""
    scale = float(b.abs().max())
    return float((a - b).abs().max()) / scale if scale else float((a - b).abs().max())


def main() -> None:
    graph, out = sys.argv[1], sys.argv[2]
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    n = B * world
    rows = slice(rank * B, (rank + 1) * B)
    errors: dict[str, float] = {}
    for method in METHODS:
        for normalize in ("MAX", "MEAN", "NONE"):
            student, teacher = batch(1, n), batch(2, n)
            labels = torch.arange(n) % K
            mine = {k: v[rows].clone().requires_grad_() for k, v in student.items()}
            total = loss_of(graph, method, normalize)(
                mine, {k: v[rows] for k, v in teacher.items()}, labels[rows]
            )["total"]
            total.backward()
            mean_loss = total.detach().clone()
            dist.all_reduce(mean_loss)
            mean_loss /= world
            grads = {}
            for k, v in mine.items():
                parts = [torch.empty_like(v) for _ in range(world)]
                dist.all_gather(parts, grad_of(v))
                grads[k] = torch.cat(parts) / world  # what DDP's averaging gives
            if rank:
                continue
            key = f"{method}/{normalize}"
            if graph == "global":
                full = {k: v.clone().requires_grad_() for k, v in student.items()}
                want = loss_of("local", method, normalize)(full, teacher, labels)["total"]
                want.backward()
                errors[key + " loss"] = rel(mean_loss, want.detach())
                errors[key + " grad"] = max(rel(grads[k], grad_of(full[k])) for k in NAMES)
            else:
                shards = [slice(r * B, (r + 1) * B) for r in range(world)]
                want = sum(
                    loss_of("local", method, normalize)(
                        {k: v[s] for k, v in student.items()},
                        {k: v[s] for k, v in teacher.items()},
                        labels[s],
                    )["total"]
                    for s in shards
                ) / world
                errors[key + " loss"] = rel(mean_loss, want.detach())
    if rank == 0:
        with open(out, "w") as f:
            json.dump(errors, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
