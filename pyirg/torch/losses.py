"""The paper's distillation losses (IRG, IRG-t, MTK) as one PyTorch loss module.

Every squared-distance term uses Caffe's EuclideanLoss scaling, sum / (2 * num) with num
the first axis of the Caffe blob, so a weight tuned in PyTorch means the same thing in the
Caffe nets the project generates:

- logits: bottom N x K, num = N;
- IRG edges: BatchEuclideanMap top N x N x 1 x 1, num = N;
- IRG transformation: BatchEuclideanVector top 1 x 1 x 1 x N, num = 1, so with equal
  weights a transformation term weighs N times more per entry than an edge term.

The ground-truth term is the batch-mean cross entropy, like SoftmaxWithLoss.

:meth:`IRGLoss.from_method` takes each method's default weights from ``METHODS`` (override
any of them by keyword): 0.05 on the logits is the paper's best value for λ2; 0.005 is the
weight of every EuclideanLoss in the authors' released prototxts. The released
IRG.prototxt has no logits term: pass ``logits_weight=0`` to reproduce it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from pyirg.torch.distributed import gather_batch
from pyirg.torch.layers import batch_euclidean_map, batch_euclidean_vector, check_params
from pyirg.torch.resnet import ResNetLayout, stage_transform_pairs

LOGITS = "logits"
#: Which instances an IRG graph relates under torch.distributed (pyirg.torch.distributed).
GRAPHS = ("local", "global")
METHODS: dict[str, dict[str, float]] = {
    "IRG": {"gt_weight": 1.0, "logits_weight": 0.05, "edge_weight": 0.005},
    "IRG-t": {"gt_weight": 1.0, "transform_weight": 0.005},
    "MTK": {
        "gt_weight": 1.0,
        "logits_weight": 0.05,
        "edge_weight": 0.005,
        "transform_weight": 0.005,
    },
}


def euclidean_loss(a: Tensor, b: Tensor, num: int) -> Tensor:
    """Caffe EuclideanLoss: sum((a - b)^2) / (2 * num)."""
    if a.shape != b.shape:
        raise ValueError(
            f"euclidean_loss: a and b must have the same shape, got {tuple(a.shape)} "
            f"and {tuple(b.shape)}"
        )
    diff = a - b
    return (diff * diff).sum() / (2 * num)


def global_pool(name: str, x: Tensor) -> Tensor:
    """(N, C, H, W) -> (N, C) by averaging, as the TRAIN-only pool_eltwise layers do."""
    if x.dim() == 2:
        return x
    if x.dim() >= 3:
        return x.flatten(2).mean(dim=2)
    raise ValueError(
        f"IRGLoss: feature {name!r} must be (N, C) or (N, C, ...), got {tuple(x.shape)}"
    )


def _feature(feats: Mapping[str, Tensor], name: str, net: str) -> Tensor:
    if name not in feats:
        raise ValueError(
            f"IRGLoss: {net} features have no {name!r} (available: {', '.join(sorted(feats))})"
        )
    return feats[name]


def _method_weights(method: str) -> dict[str, float]:
    if method not in METHODS:
        raise ValueError(f"IRGLoss: method must be one of {tuple(METHODS)}, got {method!r}")
    return METHODS[method]


def _check_pairs(arg: str, pairs: Sequence[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    out = tuple(tuple(p) for p in pairs)
    if any(len(p) != 2 for p in out):
        raise ValueError(f"IRGLoss: {arg} must be (name_a, name_b) pairs, got {pairs!r}")
    return out  # type: ignore[return-value]


class IRGLoss(nn.Module):
    """L = λ1·L_GT + λ2·L_logits + λ3·Σ L_edges + λ4·Σ L_IRG-t (a zero weight skips its term).

    ``transform_pairs`` names (layer_a, layer_b) in both networks; when the student keeps
    the teacher's numbering with gaps (ResNet-14 under ResNet-20) the same stage boundary
    has different names in the two nets, so ``teacher_transform_pairs`` may give the
    teacher's names separately (same length, same order).

    Under ``torch.distributed``, ``graph="local"`` relates each rank's own batch (what
    Caffe's multi-GPU training does) and ``graph="global"`` the instances of all ranks
    of ``group``, so that N ranks of batch B give the loss and gradients of one process
    with batch N·B (see :mod:`pyirg.torch.distributed`). Without a process group the
    two are the same.
    """

    def __init__(
        self,
        gt_weight: float = 1.0,
        logits_weight: float = 0.0,
        edge_weight: float = 0.0,
        transform_weight: float = 0.0,
        edge_layers: Sequence[str] = (),
        transform_pairs: Sequence[tuple[str, str]] = (),
        teacher_transform_pairs: Sequence[tuple[str, str]] | None = None,
        normalize: str = "MAX",
        squared: bool = True,
        backward: str = "EXACT",
        graph: str = "local",
        group: object | None = None,
    ) -> None:
        super().__init__()
        check_params("IRGLoss", normalize, squared, backward)
        if graph not in GRAPHS:
            raise ValueError(f"IRGLoss: graph must be one of {GRAPHS}, got {graph!r}")
        self.graph = graph
        self.group = group
        if isinstance(edge_layers, str):
            raise ValueError(
                f"IRGLoss: edge_layers must be a sequence of names, got {edge_layers!r}"
            )
        self.weights = {
            "gt": float(gt_weight),
            "logits": float(logits_weight),
            "edges": float(edge_weight),
            "transform": float(transform_weight),
        }
        self.edge_layers = tuple(edge_layers)
        self.transform_pairs = _check_pairs("transform_pairs", transform_pairs)
        self.teacher_transform_pairs = (
            self.transform_pairs
            if teacher_transform_pairs is None
            else _check_pairs("teacher_transform_pairs", teacher_transform_pairs)
        )
        if len(self.teacher_transform_pairs) != len(self.transform_pairs):
            raise ValueError(
                "IRGLoss: teacher_transform_pairs must match transform_pairs one to one, got "
                f"{len(self.teacher_transform_pairs)} and {len(self.transform_pairs)} pairs"
            )
        if self.weights["edges"] and not self.edge_layers:
            raise ValueError("IRGLoss: edge_weight is nonzero but edge_layers is empty")
        if self.weights["transform"] and not self.transform_pairs:
            raise ValueError("IRGLoss: transform_weight is nonzero but transform_pairs is empty")
        self.normalize = normalize
        self.squared = squared
        self.backward_mode = backward

    @classmethod
    def from_method(
        cls,
        method: str,
        edge_layers: Sequence[str] = ("Pooling1",),
        transform_pairs: Sequence[tuple[str, str]] = (),
        **kwargs: object,
    ) -> IRGLoss:
        """Build the loss of a paper method ("IRG", "IRG-t", "MTK") with its default weights.

        The default edge layer is the pooled feature, as in the released IRG.prototxt;
        IRG-t and MTK need ``transform_pairs`` (see :meth:`from_networks`).
        """
        options: dict[str, object] = {**_method_weights(method), **kwargs}
        return cls(edge_layers=edge_layers, transform_pairs=transform_pairs, **options)  # type: ignore[arg-type]

    @classmethod
    def from_networks(
        cls,
        method: str,
        teacher: ResNetLayout,
        student: ResNetLayout,
        **kwargs: object,
    ) -> IRGLoss:
        """The paper's loss of ``method`` between two reference ResNets, layers chosen here.

        The reference picks the layers the terms compare itself, from the paper, rather
        than taking them from the Caffe side's configuration (``pyirg.distill``), so that
        ``tools/verify.py`` would catch a wrong choice there: edges on the pooled feature
        (``Pooling1``, as the released IRG.prototxt), and, when the transformation term is
        weighted, :func:`~pyirg.torch.resnet.stage_transform_pairs` of each network (the
        student's own names, which differ from the teacher's when it keeps a deeper
        numbering). ``kwargs`` override the weights and layer settings.
        """
        transform = kwargs.get("transform_weight", _method_weights(method).get("transform_weight"))
        pairs = {}
        if transform:
            pairs = {
                "transform_pairs": stage_transform_pairs(student),
                "teacher_transform_pairs": stage_transform_pairs(teacher),
            }
        return cls.from_method(method, edge_layers=(student.pool,), **pairs, **kwargs)

    def extra_repr(self) -> str:
        w = ", ".join(f"{k}={v}" for k, v in self.weights.items())
        return (
            f"{w}, edge_layers={self.edge_layers}, transform_pairs={self.transform_pairs}, "
            f"normalize={self.normalize}, squared={self.squared}, backward={self.backward_mode}, "
            f"graph={self.graph}"
        )

    def _batch(self, x: Tensor, what: str) -> Tensor:
        """The instances the graph relates: this rank's, or all ranks' (graph="global")."""
        return gather_batch(x, what, self.group) if self.graph == "global" else x

    def _map(self, feats: Mapping[str, Tensor], name: str, net: str) -> Tensor:
        x = self._batch(_feature(feats, name, net), f"{net} {name!r}")
        return batch_euclidean_map(x, self.normalize, self.squared, self.backward_mode)

    def _vector(self, feats: Mapping[str, Tensor], pair: tuple[str, str], net: str) -> Tensor:
        a, b = (self._batch(global_pool(n, _feature(feats, n, net)), f"{net} {n!r}") for n in pair)
        if a.shape != b.shape:
            raise ValueError(
                f"IRGLoss: IRG-t compares each instance's pooled features at two layers of the "
                f"same {net} network, so {pair[0]!r} {tuple(a.shape)} and {pair[1]!r} "
                f"{tuple(b.shape)} must have the same channel count; pick two layers of one "
                "stage (e.g. its first and last block)"
            )
        return batch_euclidean_vector(a, b, self.normalize, self.squared, self.backward_mode)

    def forward(
        self,
        student_feats: Mapping[str, Tensor],
        teacher_feats: Mapping[str, Tensor],
        labels: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Unweighted terms (as Caffe logs its loss tops) plus the weighted "total".

        Skipped terms (weight 0) are absent from the result.
        """
        teacher = {k: v.detach() for k, v in teacher_feats.items()}
        logits = _feature(student_feats, LOGITS, "student")
        n = logits.shape[0]
        terms: dict[str, Tensor] = {}
        if self.weights["gt"]:
            if labels is None:
                raise ValueError("IRGLoss: gt_weight is nonzero but no labels were given")
            terms["gt"] = F.cross_entropy(logits, labels)
        if self.weights["logits"]:
            t_logits = _feature(teacher, LOGITS, "teacher")
            if t_logits.shape != logits.shape:
                raise ValueError(
                    f"IRGLoss: student logits {tuple(logits.shape)} and teacher logits "
                    f"{tuple(t_logits.shape)} must have the same shape"
                )
            terms["logits"] = euclidean_loss(logits, t_logits, num=n)
        if self.weights["edges"]:
            edges = [
                (self._map(student_feats, name, "student"), self._map(teacher, name, "teacher"))
                for name in self.edge_layers
            ]
            # num: the graph's N (all ranks' instances under graph="global").
            terms["edges"] = sum(
                (euclidean_loss(s, t, num=s.shape[0]) for s, t in edges),
                start=logits.new_zeros(()),
            )
        if self.weights["transform"]:
            terms["transform"] = sum(
                (
                    euclidean_loss(
                        self._vector(student_feats, s_pair, "student"),
                        self._vector(teacher, t_pair, "teacher"),
                        num=1,
                    )
                    for s_pair, t_pair in zip(self.transform_pairs, self.teacher_transform_pairs)
                ),
                start=logits.new_zeros(()),
            )
        terms["total"] = sum(
            (self.weights[key] * value for key, value in terms.items()), start=logits.new_zeros(())
        )
        return terms


__all__ = ["GRAPHS", "IRGLoss", "METHODS", "euclidean_loss", "global_pool"]
