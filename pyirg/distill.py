"""Distillation nets: a frozen teacher, a student and the IRG loss terms, in one prototxt.

The paper's loss is ``λ1 L_GT + λ2 L_logits + λ3 L_IRG-edges + λ4 L_IRG-t``; each term is
a Caffe layer chain whose loss weight is its λ (a term with weight 0 is left out):

- ground truth: the student's ``stu_SoftmaxWithLoss1`` (``loss_weight`` written only when
  λ1 != 1); the teacher's ``SoftmaxWithLoss1`` stays, with weight 0, as in the authors'
  files, so its loss is logged but never trained;
- logits: ``EuclideanLoss`` ``logits_loss`` between ``InnerProduct1`` and
  ``stu_InnerProduct1``;
- IRG edges: a ``BatchEuclideanMap`` per network on each edge layer and a
  ``EuclideanLoss`` between the two maps. For one edge layer the names are the authors'
  ``bem`` / ``stu_bem`` / ``bem_loss``; for several they are ``bem_<layer>`` /
  ``stu_bem_<layer>`` / ``bem_<layer>_loss`` (e.g. ``bem_Eltwise3``), unambiguous and
  still grouped under the authors' stem. The maps sit right after the networks'
  ``Pooling1`` (before ``InnerProduct1``) where the authors put theirs; a map on an
  earlier blob reads it after its in-place layers, which is the same value;
- IRG transformation: TRAIN-only global average pooling ``pool_eltwiseK`` of each layer a
  pair uses (``Pooling1`` is already pooled), a ``BatchEuclideanVector`` ``bemXY`` per pair
  and network, and TRAIN-only ``EuclideanLoss`` ``bemXY_loss``. ``XY`` are the block
  numbers of the teacher's pair in ascending order (``Pooling1`` counts as the last
  block), as the authors name them: (Eltwise3, Eltwise1) -> ``bem13``, (Pooling1,
  Eltwise7) -> ``bem79``; the student's layer is the same name prefixed, even when its
  own pair differs (ResNet-14 numbered as 20 pairs (Eltwise5, Eltwise4) with the
  teacher's ``bem46``). Numbers of 10 or more are joined with ``_`` (``bem10_12``).

Channel matching for transformation pairs. ``BatchEuclideanVector`` compares
``x_i - y_i`` so both pooled features need the same size. The authors' pairs lie within
a stage, where they do; a pair across stages (16 vs 32 channels, say) is matched here
with standard, parameter-free Caffe layers by zero-padding the narrower pooled vector up
to the wider one's channel count: ``Power`` (scale 0) of the wider vector gives zeros of
its shape, ``Slice`` takes the number of channels missing (the rest goes to a ``Silence``
layer), and ``Concat`` appends them to the narrower vector. This is the fixed isometric
embedding that He et al.'s parameter-free (option A) shortcuts use between stages of
different widths: ``||[x, 0] - y||^2 = ||x - y_first||^2 + ||y_rest||^2``, nothing is
learned or averaged away, and the zero path passes no gradient (Power with scale 0 has
derivative 0). The extra layers are TRAIN-only and named ``<vector>_zeros``,
``<vector>_pad``, ``<vector>_pad_unused``, ``<vector>_silence`` and ``<vector>_a`` /
``<vector>_b`` (the padded bottom).

The IRG layers' ``irg_param`` is written only for values that differ from the defaults
(normalize MAX, squared true, backward EXACT), so a default net reads like the authors'.

Default weights per method (:data:`METHOD_WEIGHTS`) are those of the PyTorch reference
(:mod:`pyirg.torch.losses`): 0.005 is the weight of every term in the authors' files and
0.05 the paper's best logits weight. The authors' released IRG.prototxt has no logits
term; :mod:`pyirg.gen` reproduces it with ``logits=0``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, fields

from caffe import layers as L
from caffe import params as P
from caffe.net_spec import NetSpec, Top
from caffe.proto import caffe_pb2

from pyirg.arch import ResNetSpec
from pyirg.netspec import (
    TRAIN,
    DataConfig,
    add_classifier,
    add_data,
    add_features,
    blob_channels,
    check_channels,
    lookup,
    spec_label,
    to_net,
)

METHODS = ("baseline", "logits", "IRG", "IRG-t", "MTK")
WEIGHT_NAMES = ("gt", "logits", "edges", "transform")
#: The command-line option of each term's weight (``--edge-weight``), in gen and the main job.
WEIGHT_OPTIONS = {
    "gt": "gt_weight",
    "logits": "logits_weight",
    "edges": "edge_weight",
    "transform": "transform_weight",
}
#: What each loss weight multiplies, for the option help.
WEIGHT_HELP = {
    "gt": "ground-truth SoftmaxWithLoss",
    "logits": "logits EuclideanLoss",
    "edges": "IRG edge term",
    "transform": "IRG transformation term",
}
METHOD_WEIGHTS: dict[str, dict[str, float]] = {
    "baseline": {"gt": 1.0},
    "logits": {"gt": 1.0, "logits": 0.05},
    "IRG": {"gt": 1.0, "logits": 0.05, "edges": 0.005},
    "IRG-t": {"gt": 1.0, "transform": 0.005},
    "MTK": {"gt": 1.0, "logits": 0.05, "edges": 0.005, "transform": 0.005},
}
#: The irg_param enums, named as the proto patch declares them.
NORMALIZE = tuple(caffe_pb2.IRGParameter.Normalize.keys())
BACKWARD = tuple(caffe_pb2.IRGParameter.Backward.keys())
#: How IRG-t averages a block output over space: the authors' global-average Pooling, or
#: Reduction (MEAN over the spatial axes: the same values as an N x C blob, computed with
#: BLAS, several times faster on the CPU; see docs/benchmarks.md).
TRANSFORM_POOLS = ("Pooling", "Reduction")
STUDENT_PREFIX = "stu_"
#: The Caffe type names of the two IRG layers (the authors', so their prototxts load).
IRG_TYPES = ("BatchEuclideanMap", "BatchEuclideanVector")

Pair = tuple[str, str]


def stage_pairs(spec: ResNetSpec) -> tuple[Pair, ...]:
    """The authors' transformation pairs: (last block, first block) of each stage.

    The last stage's last block is named by its pooled blob ``Pooling1``, as they do.
    """
    pairs = []
    for stage in range(3):
        blocks = [b for b in spec.blocks if b.stage == stage]
        if len(blocks) < 2:
            raise ValueError(
                f"{spec_label(spec)} has one block in stage {stage + 1}: its first and last "
                "block coincide, so the stage has no transformation; give pairs explicitly"
            )
        last = spec.pool if stage == 2 else blocks[-1].eltwise
        pairs.append((last, blocks[0].eltwise))
    return tuple(pairs)


def _as_pairs(pairs: Sequence[Sequence[str]], what: str) -> tuple[Pair, ...]:
    out = []
    for pair in pairs:
        if len(pair) != 2 or pair[0] == pair[1]:
            raise ValueError(f"{what}: each pair must name two different layers, got {pair!r}")
        out.append((str(pair[0]), str(pair[1])))
    return tuple(out)


@dataclass(frozen=True)
class DistillConfig:
    """Everything that decides a distillation net.

    ``gt``, ``logits``, ``edges``, ``transform`` are λ1..λ4. ``teacher_pairs`` /
    ``student_pairs`` are the transformation pairs (layer_a, layer_b) in each network;
    ``None`` means the authors' rule (:func:`stage_pairs`) for that network, except that
    a student given no pairs while the teacher's are explicit reuses the teacher's names.
    """

    teacher: ResNetSpec
    student: ResNetSpec
    gt: float = 1.0
    logits: float = 0.0
    edges: float = 0.0
    transform: float = 0.0
    edge_layers: tuple[str, ...] = ("Pooling1",)
    teacher_pairs: tuple[Pair, ...] | None = None
    student_pairs: tuple[Pair, ...] | None = None
    normalize: str = "MAX"
    squared: bool = True
    backward: str = "EXACT"
    transform_pool: str = "Pooling"
    data: DataConfig = field(default_factory=DataConfig)
    name: str = "resnet_cifar10_distill"
    student_prefix: str = STUDENT_PREFIX

    def __post_init__(self) -> None:
        for w in WEIGHT_NAMES:
            value = getattr(self, w)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"DistillConfig.{w} weight must be finite and >= 0, got {value}")
        if not (self.logits or self.edges or self.transform):
            raise ValueError(
                "DistillConfig: logits, edges and transform weights are all 0, so the teacher "
                "teaches nothing; use pyirg.netspec.train_net for the baseline"
            )
        for name, choices in (
            ("normalize", NORMALIZE),
            ("transform_pool", TRANSFORM_POOLS),
            ("backward", BACKWARD),
        ):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {getattr(self, name)!r}")
        if not self.student_prefix:
            raise ValueError("student_prefix must be non-empty: teacher layers have no prefix")
        t, s = self.teacher, self.student
        dataset = self.data.dataset
        for spec, role in ((t, "teacher"), (s, "student")):
            check_channels(spec, dataset.channels, f"data set {dataset.name!r}", role)
        if t.num_classes != s.num_classes:
            raise ValueError(
                f"teacher has {t.num_classes} classes and student {s.num_classes}: they must "
                "classify the same labels"
            )
        if self.edges:
            if not self.edge_layers:
                raise ValueError("edges weight is nonzero but edge_layers is empty")
            if len(set(self.edge_layers)) != len(self.edge_layers):
                raise ValueError(f"edge_layers {self.edge_layers} names a layer twice")
            for layer in self.edge_layers:
                for spec, role in ((t, "teacher"), (s, "student")):
                    lookup(blob_channels(spec), layer, spec, f"edge layer {layer!r}: {role}")
        if self.transform:
            self.pairs()  # validates

    def pairs(self) -> tuple[tuple[Pair, ...], tuple[Pair, ...]]:
        """(teacher pairs, student pairs), resolved and checked against both networks."""
        if self.teacher_pairs is None:
            teacher = stage_pairs(self.teacher)
        else:
            teacher = _as_pairs(self.teacher_pairs, "teacher_pairs")
        if self.student_pairs is not None:
            student = _as_pairs(self.student_pairs, "student_pairs")
        elif self.teacher_pairs is not None:
            student = teacher
        else:
            student = stage_pairs(self.student)
        if not teacher:
            raise ValueError("transform weight is nonzero but there are no transformation pairs")
        if len(teacher) != len(student):
            raise ValueError(
                f"teacher has {len(teacher)} transformation pairs {teacher} and student "
                f"{len(student)} {student}: they are compared one to one"
            )
        for spec, role, plist in (
            (self.teacher, "teacher", teacher),
            (self.student, "student", student),
        ):
            channels = blob_channels(spec)
            for pair in plist:
                for layer in pair:
                    lookup(channels, layer, spec, f"transformation pair {pair}: {role}")
                    if layer == spec.fc:
                        raise ValueError(
                            f"transformation pair {pair}: {role} {layer!r} is the classifier "
                            "output (N x classes), which cannot be globally pooled; use "
                            f"{spec.pool!r} or an earlier blob"
                        )
        names = [vector_name(self.teacher, a, b) for a, b in teacher]
        if len(set(names)) != len(names):
            raise ValueError(f"transformation pairs {teacher} give duplicate layer names {names}")
        return teacher, student

    @property
    def irg_param(self) -> dict[str, object]:
        """The non-default IRGParameter fields, as NetSpec keyword values."""
        out: dict[str, object] = {}
        if self.normalize != "MAX":
            out["normalize"] = getattr(caffe_pb2.IRGParameter, self.normalize)
        if not self.squared:
            out["squared"] = False
        if self.backward != "EXACT":
            out["backward"] = getattr(caffe_pb2.IRGParameter, self.backward)
        return out

    @classmethod
    def for_method(
        cls, method: str, teacher: ResNetSpec, student: ResNetSpec, **overrides: object
    ) -> DistillConfig:
        """A config with the method's default weights (:data:`METHOD_WEIGHTS`) + overrides."""
        if method not in METHOD_WEIGHTS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if method == "baseline":
            raise ValueError(
                "method 'baseline' trains the student alone, without a teacher: use "
                "pyirg.netspec.train_net"
            )
        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"DistillConfig has no field(s) {sorted(unknown)}")
        values = {**dict.fromkeys(WEIGHT_NAMES, 0.0), **METHOD_WEIGHTS[method], **overrides}
        return cls(teacher=teacher, student=student, **values)  # type: ignore[arg-type]


def _block_number(spec: ResNetSpec, layer: str) -> int | None:
    """Eltwise number of a block output; ``Pooling1`` counts as the last block's."""
    if layer == spec.pool:
        layer = spec.blocks[-1].eltwise
    match = re.fullmatch(r"Eltwise(\d+)", layer)
    return int(match.group(1)) if match else None


def vector_name(spec: ResNetSpec, a: str, b: str) -> str:
    """``bemXY`` for the teacher's pair (a, b) (see the module docstring)."""
    na, nb = _block_number(spec, a), _block_number(spec, b)
    if na is None or nb is None:
        return f"bem_{a}_{b}"
    lo, hi = sorted((na, nb))
    return f"bem{lo}{hi}" if hi < 10 else f"bem{lo}_{hi}"


def edge_names(layers: Sequence[str], layer: str) -> tuple[str, str]:
    """(map name without prefix, loss name) for one edge layer."""
    stem = "bem" if len(layers) == 1 else f"bem_{layer}"
    return stem, f"{stem}_loss"


#: The keywords of a layer that only TRAIN runs (the IRG-t chain: TEST has no loss for it).
_TRAIN_ONLY = {"include": {"phase": TRAIN}}


def _zero_pad(ns: NetSpec, base: str, side: str, narrow: Top, wide: Top, missing: int) -> Top:
    """``narrow`` (N x c) followed by ``missing`` zero channels taken from ``wide``'s shape."""
    ns[f"{base}_zeros"] = zeros = L.Power(wide, scale=0, **_TRAIN_ONLY)
    ns[f"{base}_pad"], ns[f"{base}_pad_unused"] = L.Slice(
        zeros, ntop=2, axis=1, slice_point=[missing], **_TRAIN_ONLY
    )
    ns[f"{base}_silence"] = L.Silence(ns[f"{base}_pad_unused"], ntop=0, **_TRAIN_ONLY)
    ns[f"{base}_{side}"] = padded = L.Concat(narrow, ns[f"{base}_pad"], axis=1, **_TRAIN_ONLY)
    return padded


def _add_vectors(
    ns: NetSpec,
    spec: ResNetSpec,
    tops: dict[str, Top],
    pairs: Sequence[Pair],
    names: Sequence[str],
    prefix: str,
    irg_kw: dict[str, object],
    pool_type: str = "Pooling",
) -> list[Top]:
    """TRAIN-only pooling of every paired layer, then one BatchEuclideanVector per pair."""
    channels = blob_channels(spec)
    order = list(channels)
    pooled: dict[str, Top] = {}
    for layer in sorted({x for pair in pairs for x in pair}, key=order.index):
        if layer == spec.pool:
            pooled[layer] = tops[layer]
        else:
            if pool_type == "Reduction":
                top = L.Reduction(tops[layer], operation=P.Reduction.MEAN, axis=2, **_TRAIN_ONLY)
            else:
                top = L.Pooling(tops[layer], pool=P.Pooling.AVE, global_pooling=True, **_TRAIN_ONLY)
            ns[f"{prefix}pool_{layer.lower()}"] = pooled[layer] = top
    out = []
    for (a, b), name in zip(pairs, names):
        base = prefix + name
        xa, xb = pooled[a], pooled[b]
        ca, cb = channels[a], channels[b]
        if ca < cb:
            xa = _zero_pad(ns, base, "a", xa, xb, cb - ca)
        elif cb < ca:
            xb = _zero_pad(ns, base, "b", xb, xa, ca - cb)
        ns[base] = top = L.BatchEuclideanVector(xa, xb, **irg_kw, **_TRAIN_ONLY)
        out.append(top)
    return out


def distill_net(cfg: DistillConfig) -> caffe_pb2.NetParameter:
    """The whole training net of ``cfg`` (layer order as in the authors' files)."""
    t_spec, s_spec, sp = cfg.teacher, cfg.student, cfg.student_prefix
    irg_kw = {"irg_param": cfg.irg_param} if cfg.irg_param else {}
    edge_layers = cfg.edge_layers if cfg.edges else ()
    ns = NetSpec()
    images, labels = add_data(ns, cfg.data)
    t_maps: dict[str, Top] = {}
    s_maps: dict[str, Top] = {}

    def add_maps(tops: dict[str, Top], maps: dict[str, Top], prefix: str) -> None:
        """Maps on the edge layers built so far (a map on the logits waits for them);
        on the student side each map's loss follows it."""
        for layer in edge_layers:
            if layer in tops and layer not in maps:
                name, loss = edge_names(edge_layers, layer)
                ns[prefix + name] = maps[layer] = L.BatchEuclideanMap(tops[layer], **irg_kw)
                if prefix:
                    ns[loss] = L.EuclideanLoss(t_maps[layer], maps[layer], loss_weight=cfg.edges)

    t = add_features(ns, t_spec, images, frozen=True)
    add_maps(t, t_maps, "")
    t[t_spec.fc] = add_classifier(
        ns, t_spec, t[t_spec.pool], frozen=True, label=labels, loss_weight=0
    )
    add_maps(t, t_maps, "")

    s = add_features(ns, s_spec, images, prefix=sp)
    add_maps(s, s_maps, sp)
    gt_weight = None if cfg.gt == 1 else cfg.gt
    s[s_spec.fc] = add_classifier(
        ns, s_spec, s[s_spec.pool], sp, label=labels, loss_weight=gt_weight
    )
    add_maps(s, s_maps, sp)
    if cfg.logits:
        ns["logits_loss"] = L.EuclideanLoss(t[t_spec.fc], s[s_spec.fc], loss_weight=cfg.logits)

    if cfg.transform:
        t_pairs, s_pairs = cfg.pairs()
        names = [vector_name(t_spec, a, b) for a, b in t_pairs]
        t_vec = _add_vectors(ns, t_spec, t, t_pairs, names, "", irg_kw, cfg.transform_pool)
        s_vec = _add_vectors(ns, s_spec, s, s_pairs, names, sp, irg_kw, cfg.transform_pool)
        for name, tv, sv in zip(names, t_vec, s_vec):
            ns[f"{name}_loss"] = L.EuclideanLoss(tv, sv, loss_weight=cfg.transform, **_TRAIN_ONLY)
    return to_net(ns, cfg.name, cfg.data)
