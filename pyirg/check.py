"""Pre-flight checks of a (distillation) net, before Caffe aborts or trains the wrong thing.

Caffe reports a bad net one CHECK failure at a time, often deep in set-up and in terms
of blob indices; some mistakes it never reports at all (a teacher that is not frozen
trains along with the student; a ``loss_weight`` on a non-loss layer silently adds that
blob's sum to the objective). :func:`check_net` reads the NetParameter alone, so it runs
in milliseconds, without data, and lists every problem with the layer and blob names:

- ``unknown-bottom``: a bottom no earlier layer produces, per phase (include/exclude
  rules are applied as Caffe's net filter does, for TRAIN and TEST, level 0, the given
  stages), with a hint when the producer comes later, exists only in the other phase, or
  a similar name exists;
- ``duplicate-top``: a top produced twice without being in place (Caffe aborts);
- ``batch-mismatch``: inputs of one IRG comparison that describe different numbers of
  instances N (e.g. a teacher and a student fed by data layers of different batch size).
  N is taken from data/Input layers and carried along the first axis through the
  standard layers (summed by a Concat, split by a Slice along axis 0); a layer this
  bookkeeping does not know makes its tops' N unknown, which is never reported;
- ``irg-bottoms``: wrong bottom/top counts (or in-place use) of BatchEuclideanMap (one
  bottom) and BatchEuclideanVector (two);
- ``teacher-not-frozen``: a teacher layer with learnable blobs whose param blocks are
  missing (a missing block means lr_mult 1, decay_mult 1) or not all ``lr_mult 0
  decay_mult 0``, or a teacher BatchNorm without ``use_global_stats: true`` (it would
  normalize with batch statistics and overwrite its trained running averages). Checked
  only when the net has both teacher and student layers (teacher: names starting with
  ``teacher_prefix``, student: with ``student_prefix``; an empty prefix means "every
  layer that is not the other network's");
- ``bn-param``: a BatchNorm param block with nonzero lr_mult (Caffe aborts);
- ``loss-weight``: ``loss_weight`` on a layer whose type is not a loss (``*Loss``), or
  more loss weights than tops;
- ``teacher-loss`` (warning): a loss fed only by the teacher with nonzero weight: its
  gradient is computed for nothing and its value inflates the reported loss;
- ``irg-in-place``: a layer in place on an IRG layer's top. The IRG layers read their
  top's data in the backward, so the loss is right and the gradients are wrong;
- ``in-place-shared``: a layer in place on a blob that another layer also reads
  (Caffe aborts: "produced by multiple sources");
- ``irg-batch-1``: an IRG layer fed a batch of one instance: its map (or vector, after
  normalizing) is always 0, so the term trains nothing;
- ``irg-batch-too-large``: a BatchEuclideanMap (or TripletRelationLoss) fed more than
  46,340 instances: its N x N matrices would pass the 2^31 - 1 entries of a Caffe blob,
  and the layer aborts;
- ``vector-size``: the two bottoms of a BatchEuclideanVector with different
  per-instance sizes (followed from Input shapes, InnerProduct, global Pooling, Reduction,
  Concat/Slice along the channels and element-wise layers): Caffe aborts;
- ``class-mismatch``: a EuclideanLoss between two InnerProduct tops of different
  ``num_output`` (e.g. logits of a teacher and a student trained on other class counts):
  Caffe aborts;
- ``empty-net``: a net with no layers; ``unknown-type``: a layer type this Caffe does
  not have (a typo such as ``BatchEuclidMap``), with the closest registered name;
- ``mean-mismatch``: a Data layer's mean file of another size than its LMDB's images
  (e.g. the unpadded LMDB with ``mean_pad.binaryproto``): Caffe aborts;
- ``missing-file``: a Data/ImageData/HDF5Data source or a mean file that does not exist
  (relative paths are taken from the current folder, as Caffe does).

Problems are errors unless marked as warnings; the command exits 1 on any error.
"""

from __future__ import annotations

import argparse
import difflib
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from caffe.proto import caffe_pb2

from pyirg.caffeio import blob_shape, read_net
from pyirg.distill import IRG_TYPES, STUDENT_PREFIX
from pyirg.options import ArgumentParser

ERROR, WARNING = "error", "warning"
IRG_MAP, IRG_VECTOR = IRG_TYPES
PHASES = {caffe_pb2.TRAIN: "TRAIN", caffe_pb2.TEST: "TEST"}
#: Layers that hold N x N matrices of a batch, and the largest N whose N x N fits a blob.
PAIR_MATRIX_TYPES = (IRG_MAP, "TripletRelationLoss")
MAX_PAIR_N = 46340
DATA_TYPES = ("Data", "ImageData", "HDF5Data", "Input", "DummyData", "MemoryData", "WindowData")
TEACHER, STUDENT, DATA = "teacher", "student", "data"

#: The parameter message of each data layer that has a ``batch_size``.
_DATA_PARAMS = {
    "Data": "data_param",
    "ImageData": "image_data_param",
    "HDF5Data": "hdf5_data_param",
    "MemoryData": "memory_data_param",
    "WindowData": "window_data_param",
}
#: Layers whose tops keep their first bottom's channels and per-instance size.
_KEEP_SHAPE = frozenset(
    "AbsVal BatchNorm Bias BNLL Clip Dropout ELU Eltwise Exp Log Power PReLU ReLU Scale "
    "Sigmoid Split Swish TanH Threshold".split()
)
#: Layer types whose every top keeps the first axis (N) of bottom 0, whatever their params.
_KEEP_N = _KEEP_SHAPE | set(
    "Convolution Deconvolution Embed Im2col LRN MVN Pooling Softmax SPP ArgMax".split()
)
#: Types that keep N unless their ``axis`` (the proto's default when unset) is 0.
_KEEP_N_UNLESS_AXIS0 = {
    "InnerProduct": "inner_product_param",
    "Concat": "concat_param",
    "Slice": "slice_param",
    "Flatten": "flatten_param",
    "Tile": "tile_param",
    "Reduction": "reduction_param",
    "Crop": "crop_param",
}


@dataclass(frozen=True)
class Problem:
    """One finding: ``kind`` is a stable code (see the module docstring)."""

    severity: str
    kind: str
    layer: str
    message: str
    phases: tuple[str, ...] = ()

    @property
    def is_error(self) -> bool:
        return self.severity == ERROR

    def __str__(self) -> str:
        phase = f" [{'/'.join(self.phases)}]" if self.phases else ""
        return f"{self.severity.upper()} {self.kind}{phase} layer {self.layer!r}: {self.message}"


@dataclass
class _Blob:
    producer: str
    owner: str
    n: int | None  # instances along the first axis, when known
    n_from: str = ""  # the data layer that set n
    irg: bool = False  # produced by an IRG layer or from one
    irg_top: str = ""  # the IRG layer whose top this is (in-place layers on it are wrong)
    features: int | None = None  # num_output of an InnerProduct top
    channels: int | None = None  # axis 1, when known
    size: int | None = None  # per-instance size (product of the axes after N), when known
    readers: list[str] = field(default_factory=list)  # layers that read this version


@dataclass
class _Prefixes:
    teacher: str
    student: str

    def owner(self, layer: caffe_pb2.LayerParameter) -> str:
        if layer.type in DATA_TYPES:
            return DATA
        name = layer.name
        if self.student and name.startswith(self.student):
            return STUDENT
        if self.teacher and name.startswith(self.teacher):
            return TEACHER
        if not self.teacher:
            return TEACHER
        return STUDENT if not self.student else ""


@dataclass
class _Collector:
    problems: dict[tuple[str, str, str, str], list[str]] = field(default_factory=dict)

    def add(
        self, kind: str, layer: str, message: str, phase: str = "", severity: str = ERROR
    ) -> None:
        phases = self.problems.setdefault((severity, kind, layer, message), [])
        if phase and phase not in phases:
            phases.append(phase)

    def result(self) -> list[Problem]:
        return [Problem(s, k, layer, m, tuple(p)) for (s, k, layer, m), p in self.problems.items()]


# ----------------------------------------------------------------------------- phases


def _meets(rule: caffe_pb2.NetStateRule, phase: int, stages: Sequence[str]) -> bool:
    """Caffe's StateMeetsRule for a state of ``phase``, level 0 and ``stages``."""
    if rule.HasField("phase") and rule.phase != phase:
        return False
    if rule.HasField("min_level") and 0 < rule.min_level:
        return False
    if rule.HasField("max_level") and 0 > rule.max_level:
        return False
    if any(s not in stages for s in rule.stage):
        return False
    return not any(s in stages for s in rule.not_stage)


def included(layer: caffe_pb2.LayerParameter, phase: int, stages: Sequence[str] = ()) -> bool:
    """Whether Caffe's net filter keeps ``layer`` in ``phase`` (include wins over default)."""
    if layer.include:
        return any(_meets(r, phase, stages) for r in layer.include)
    return not any(_meets(r, phase, stages) for r in layer.exclude)


# ----------------------------------------------------------------------------- N bookkeeping


def _data_batches(layer: caffe_pb2.LayerParameter) -> list[int | None]:
    """First axis of each top of a data layer, from its parameters."""
    ntop = len(layer.top)
    t = layer.type
    if t in _DATA_PARAMS:
        return [getattr(layer, _DATA_PARAMS[t]).batch_size or None] * ntop
    shapes = layer.input_param.shape if t == "Input" else layer.dummy_data_param.shape
    if t == "DummyData" and not shapes:
        nums = list(layer.dummy_data_param.num)
        return [(nums[i] if i < len(nums) else nums[0]) if nums else None for i in range(ntop)]
    out: list[int | None] = []
    for i in range(ntop):
        shape = shapes[i] if i < len(shapes) else (shapes[0] if len(shapes) == 1 else None)
        out.append(shape.dim[0] if shape is not None and shape.dim else None)
    return out


def _keeps_n(layer: caffe_pb2.LayerParameter) -> bool:
    t = layer.type
    if t in _KEEP_N:
        return True
    if t in _KEEP_N_UNLESS_AXIS0:
        return getattr(layer, _KEEP_N_UNLESS_AXIS0[t]).axis != 0
    if t == "Reshape":  # along axis 0 it keeps N where its shape's first dim is 0 ("copy")
        rp = layer.reshape_param
        return rp.axis != 0 or (len(rp.shape.dim) > 0 and rp.shape.dim[0] == 0)
    return False


# ----------------------------------------------------------------------------- checks


def _is_loss(layer_type: str) -> bool:
    return layer_type.endswith("Loss")


#: Layers with a weight blob and, if their ``bias_term`` says so, a bias blob.
_WEIGHT_AND_BIAS = {
    "Convolution": "convolution_param",
    "Deconvolution": "convolution_param",
    "InnerProduct": "inner_product_param",
    "Embed": "embed_param",
}


def _learnable_blobs(layer: caffe_pb2.LayerParameter) -> int:
    t = layer.type
    if t in _WEIGHT_AND_BIAS:
        return 1 + int(getattr(layer, _WEIGHT_AND_BIAS[t]).bias_term)
    if t == "Scale":
        return int(len(layer.bottom) < 2) + int(layer.scale_param.bias_term)
    if t == "Bias":
        return int(len(layer.bottom) < 2)
    if t == "PReLU":
        return 1
    return len(layer.param)


def _check_frozen(layer: caffe_pb2.LayerParameter, out: _Collector) -> None:
    if layer.type == "BatchNorm":
        bn = layer.batch_norm_param
        if not (bn.HasField("use_global_stats") and bn.use_global_stats):
            state = "false" if bn.HasField("use_global_stats") else "unset"
            out.add(
                "teacher-not-frozen",
                layer.name,
                f"teacher BatchNorm has use_global_stats {state}: in TRAIN it normalizes with "
                "batch statistics and overwrites its trained running averages; set "
                "batch_norm_param { use_global_stats: true }",
            )
        return
    blobs = _learnable_blobs(layer)
    if not blobs:
        return
    bad = [
        f"blob {i}: lr_mult {p.lr_mult:g}, decay_mult {p.decay_mult:g}"
        for i, p in enumerate(layer.param)
        if p.lr_mult != 0 or p.decay_mult != 0
    ]
    bad += [
        f"blob {i}: no param block (lr_mult 1, decay_mult 1)"
        for i in range(len(layer.param), blobs)
    ]
    if bad:
        out.add(
            "teacher-not-frozen",
            layer.name,
            f"teacher {layer.type} would train ({'; '.join(bad)}); every param block of a "
            "teacher must be lr_mult 0, decay_mult 0",
        )


def _check_layer_static(layer: caffe_pb2.LayerParameter, out: _Collector) -> None:
    """Checks that do not depend on the phase."""
    name, t = layer.name, layer.type
    if t == "BatchNorm":
        for i, p in enumerate(layer.param):
            if p.lr_mult != 0:
                out.add(
                    "bn-param",
                    name,
                    f"BatchNorm param {i} has lr_mult {p.lr_mult:g}; its blobs are statistics "
                    "and Caffe aborts ('Cannot configure batch normalization statistics as "
                    "layer parameters')",
                )
    if layer.loss_weight and t != "Python":
        if not _is_loss(t):
            weights = ", ".join(f"{w:g}" for w in layer.loss_weight)
            effect = (
                "Caffe would add the weighted sum of its top(s) to the objective"
                if any(layer.loss_weight)
                else "it has no effect here and was probably meant for a loss layer"
            )
            out.add(
                "loss-weight",
                name,
                f"loss_weight {weights} on a layer of type {t}, which is not a loss: {effect}",
            )
        if len(layer.loss_weight) > len(layer.top):
            out.add(
                "loss-weight",
                name,
                f"{len(layer.loss_weight)} loss_weight values for {len(layer.top)} top(s)",
            )
    if t in IRG_TYPES:
        want = 1 if t == IRG_MAP else 2
        shapes = "one bottom (N x ...)" if want == 1 else "two bottoms (x and y, both N x ...)"
        if len(layer.bottom) != want:
            got = ", ".join(repr(b) for b in layer.bottom) or "none"
            out.add("irg-bottoms", name, f"{t} takes exactly {shapes}, got {got}")
        if len(layer.top) != 1:
            out.add("irg-bottoms", name, f"{t} has one top, got {len(layer.top)}")
        elif layer.top[0] in layer.bottom:
            out.add("irg-bottoms", name, f"{t} cannot run in place ({layer.top[0]!r})")


def _unknown_bottom_hint(
    bottom: str, index: int, net: caffe_pb2.NetParameter, phase: int, known: Iterable[str]
) -> str:
    producers = [i for i, la in enumerate(net.layer) if bottom in la.top and i != index]
    later = [i for i in producers if i > index and included(net.layer[i], phase)]
    if later:
        return f"; layer {net.layer[later[0]].name!r} produces it, but later in the file"
    if producers:
        producer = net.layer[producers[0]]
        phases = [PHASES[p] for p in PHASES if included(producer, p)]
        where = " and ".join(phases) or "no phase"
        return f"; layer {producer.name!r} produces it only in {where}"
    close = difflib.get_close_matches(bottom, list(known), n=1)
    return f"; did you mean {close[0]!r}?" if close else "; no layer produces it"


def _check_phase(
    net: caffe_pb2.NetParameter,
    phase: int,
    stages: Sequence[str],
    prefixes: _Prefixes,
    out: _Collector,
) -> dict[str, _Blob]:
    """Walk the layers active in ``phase``, checking each against the blobs before it."""
    pname = PHASES[phase]
    blobs = _net_inputs(net)
    for index, layer in enumerate(net.layer):
        if not included(layer, phase, stages):
            continue
        known: list[_Blob | None] = []
        for b in layer.bottom:
            if b not in blobs:
                hint = _unknown_bottom_hint(b, index, net, phase, blobs)
                out.add(
                    "unknown-bottom",
                    layer.name,
                    f"bottom {b!r} is not produced by any earlier layer{hint}",
                    pname,
                )
            known.append(blobs.get(b))
        _check_batches(layer, known, out, pname)
        for b in layer.bottom:
            if b in blobs and b not in layer.top:
                blobs[b].readers.append(layer.name)
        _check_irg_use(layer, known, out, pname)
        _add_tops(layer, _layer_tops(layer, known, prefixes.owner(layer)), blobs, out, pname)
    return blobs


def _net_inputs(net: caffe_pb2.NetParameter) -> dict[str, _Blob]:
    """The net-level inputs (``input`` / ``input_shape`` / legacy ``input_dim``)."""
    blobs: dict[str, _Blob] = {}
    for i, name in enumerate(net.input):
        if net.input_shape:
            dims = net.input_shape[i].dim if i < len(net.input_shape) else []
            n = dims[0] if dims else None
        else:
            n = net.input_dim[4 * i] if len(net.input_dim) > 4 * i else None
        blobs[name] = _Blob("(net input)", DATA, n, f"net input {name!r}")
    return blobs


def _layer_tops(layer: Any, known: list[_Blob | None], owner: str) -> list[_Blob]:
    """What the layer's tops are: their batch size and where it comes from, owner, sizes."""
    if layer.type in DATA_TYPES:
        tops = [_Blob(layer.name, DATA, n, layer.name) for n in _data_batches(layer)]
    else:
        first = known[0] if known else None
        keep = first is not None and (_keeps_n(layer) or layer.type in IRG_TYPES)
        irg = layer.type in IRG_TYPES or any(k is not None and k.irg for k in known)
        n = first.n if keep and first is not None else None
        n_from = first.n_from if keep and first is not None else ""
        ns = _axis0_batches(layer, known) or [n] * len(layer.top)
        if any(m is not None for m in ns) and n is None:
            n_from = next((k.n_from for k in known if k is not None and k.n_from), "")
        tops = [_Blob(layer.name, owner, m, n_from, irg) for m in ns]
        for top in tops:
            if layer.type in IRG_TYPES:
                top.irg_top = layer.name
            if layer.type == "InnerProduct" and layer.inner_product_param.num_output:
                top.features = layer.inner_product_param.num_output
    for info, (c, d) in zip(tops, _instance_sizes(layer, known)):
        info.channels, info.size = c, d
    return tops


def _add_tops(
    layer: Any, tops: list[_Blob], blobs: dict[str, _Blob], out: _Collector, pname: str
) -> None:
    """Record the layer's tops; a second producer of a blob is what Caffe aborts on."""
    for j, (top, info) in enumerate(zip(layer.top, tops)):
        in_place = j < len(layer.bottom) and layer.bottom[j] == top
        if in_place and top in blobs and blobs[top].readers:
            out.add(
                "in-place-shared",
                layer.name,
                f"{layer.type} runs in place on {top!r}, which {blobs[top].readers[0]!r} "
                "also reads: Caffe's split of a shared blob makes this layer a second "
                "producer and aborts ('produced by multiple sources'); give it its own top",
                pname,
            )
        if top in blobs and not in_place:
            out.add(
                "duplicate-top",
                layer.name,
                f"top {top!r} is already produced by {blobs[top].producer!r} and this "
                "layer is not in place on it (Caffe: 'produced by multiple sources')",
                pname,
            )
        if in_place and top in blobs:
            info.owner = blobs[top].owner
        blobs[top] = info


def _axis0_batches(
    layer: caffe_pb2.LayerParameter, known: list[_Blob | None]
) -> list[int | None] | None:
    """N of each top of a Concat or Slice along axis 0 (None: not such a layer)."""
    if layer.type == "Concat" and layer.concat_param.axis == 0:
        ns = [k.n if k is not None else None for k in known]
        total = sum(ns) if ns and all(m is not None for m in ns) else None  # type: ignore[arg-type]
        return [total] * len(layer.top)
    if layer.type == "Slice" and layer.slice_param.axis == 0 and known and known[0] is not None:
        n, points = known[0].n, list(layer.slice_param.slice_point)
        if n is None:
            return [None] * len(layer.top)
        if points:
            edges = [0, *points, n]
            return [b - a for a, b in zip(edges, edges[1:])]
        return [n // len(layer.top) if layer.top else None] * len(layer.top)
    return None


def _instance_sizes(
    layer: caffe_pb2.LayerParameter, known: list[_Blob | None]
) -> list[tuple[int | None, int | None]]:
    """(channels, per-instance size) of each top, where the layer makes them known: just
    enough to follow pooled features to an IRG vector layer (see ``vector-size``);
    anything else is unknown, and unknown is never reported."""
    t, n = layer.type, len(layer.top)
    first = known[0] if known else None
    c0, d0 = (first.channels, first.size) if first is not None else (None, None)
    if t == "Input":
        out = []
        for i in range(n):
            shapes = layer.input_param.shape
            dims = list(shapes[min(i, len(shapes) - 1)].dim) if shapes else []
            size = math.prod(dims[1:]) if dims else None
            out.append((dims[1] if len(dims) > 1 else None, size))
        return out
    if t == "InnerProduct" and layer.inner_product_param.num_output:
        k = layer.inner_product_param.num_output
        return [(k, k)] * n
    if t in ("Convolution", "Deconvolution") and layer.convolution_param.num_output:
        return [(layer.convolution_param.num_output, None)] * n
    if t == "Pooling":
        return [(c0, c0 if layer.pooling_param.global_pooling else None)] * n
    if t == "Reduction" and layer.reduction_param.axis == 2:
        return [(c0, c0)] * n
    if t in _KEEP_SHAPE:
        return [(c0, d0)] * n
    pooled = [k is not None and k.size is not None and k.size == k.channels for k in known]
    if t == "Concat" and layer.concat_param.axis == 1 and known and all(pooled):
        c = sum(k.channels for k in known)  # type: ignore[misc, union-attr]
        return [(c, c)] * n
    if t == "Slice" and layer.slice_param.axis == 1 and pooled[:1] == [True] and c0:
        edges = [0, *layer.slice_param.slice_point, c0]
        if len(edges) == n + 1:
            return [(b - a, b - a) for a, b in zip(edges, edges[1:])]
    return [(None, None)] * n


def _check_irg_use(
    layer: caffe_pb2.LayerParameter, known: list[_Blob | None], out: _Collector, phase: str
) -> None:
    """In-place layers on IRG tops, IRG layers fed one instance, logits of other widths."""
    for j, (bottom, k) in enumerate(zip(layer.bottom, known)):
        if k is not None and k.irg_top and j < len(layer.top) and layer.top[j] == bottom:
            out.add(
                "irg-in-place",
                layer.name,
                f"{layer.type} runs in place on {bottom!r}, the top of {k.irg_top!r}; the IRG "
                "layers read their top's data in the backward, so the loss would be right "
                "and the gradients wrong: give this layer its own top",
                phase,
            )
    irg = layer.irg_param
    vector_trains = layer.type == IRG_VECTOR and (
        irg.normalize == caffe_pb2.IRGParameter.NONE
        or irg.backward == caffe_pb2.IRGParameter.RELEASED
    )  # with N = 1 a normalized vector is 1 and its exact gradient 0, else it trains
    first = known[0] if known else None
    n, n_from = (first.n, first.n_from) if first is not None else (None, "")
    if layer.type in IRG_TYPES and not vector_trains and n == 1:
        out.add(
            "irg-batch-1",
            layer.name,
            f"{layer.type} gets a batch of N=1 (from {n_from}): a graph of one "
            "instance has no edges, its term is always 0 and trains nothing",
            phase,
        )
    if layer.type in PAIR_MATRIX_TYPES and n is not None and n > MAX_PAIR_N:
        out.add(
            "irg-batch-too-large",
            layer.name,
            f"{layer.type} gets a batch of N={n} (from {n_from}): its "
            f"N x N matrices would pass the {2**31 - 1} entries of a Caffe blob "
            f"(N <= {MAX_PAIR_N}), and the layer aborts",
            phase,
        )
    sizes = [(b, k.size) for b, k in zip(layer.bottom, known) if k is not None and k.size]
    if layer.type == IRG_VECTOR and len(sizes) == 2 and sizes[0][1] != sizes[1][1]:
        described = " and ".join(f"{b!r} ({d} per instance)" for b, d in sizes)
        out.add(
            "vector-size",
            layer.name,
            f"BatchEuclideanVector compares {described}: both bottoms need the same "
            "per-instance size (zero-pad the narrower one, as pyirg.distill does); Caffe aborts",
            phase,
        )
    widths = [(b, k.features) for b, k in zip(layer.bottom, known) if k is not None]
    if layer.type == "EuclideanLoss" and len({f for _, f in widths if f}) > 1:
        described = ", ".join(f"{b!r} ({f} outputs)" for b, f in widths)
        out.add(
            "class-mismatch",
            layer.name,
            f"EuclideanLoss between InnerProduct tops of different widths: {described}; "
            "logits can only be matched between nets of the same classes (Caffe aborts)",
            phase,
        )


def _check_files(layer: caffe_pb2.LayerParameter, out: _Collector) -> None:
    """Data sources and mean files that Caffe would fail to open."""
    paths = []
    if layer.type in ("Data", "ImageData", "HDF5Data"):
        paths.append(("source", getattr(layer, _DATA_PARAMS[layer.type]).source))
    tp = layer.transform_param
    if tp.HasField("mean_file"):
        paths.append(("mean_file", tp.mean_file))
    missing = False
    for what, path in paths:
        if path and not Path(path).exists():
            missing = True
            out.add(
                "missing-file",
                layer.name,
                f"{what} {path!r} does not exist (from {Path.cwd()}); prepare the data "
                "(pyirg prepare-data) or fix the path",
            )
    if layer.type == "Data" and tp.HasField("mean_file") and not missing:
        if layer.data_param.backend == caffe_pb2.DataParameter.LMDB:
            datum, mean = _lmdb_datum_shape(layer.data_param.source), _mean_shape(tp.mean_file)
            if datum and mean and datum != mean:
                out.add(
                    "mean-mismatch",
                    layer.name,
                    f"mean_file {tp.mean_file!r} is {'x'.join(map(str, mean))} but the images "
                    f"of {layer.data_param.source!r} are {'x'.join(map(str, datum))} (C x H x W): "
                    "Caffe aborts; the padded train LMDB goes with mean_pad.binaryproto",
                )


def _lmdb_peek(source: str) -> tuple[int, bytes | None] | None:
    """(records, the first record's value) of an LMDB, or None when it cannot be read."""
    try:
        import lmdb

        env = lmdb.open(source, readonly=True, lock=False, subdir=Path(source).is_dir())
        with env.begin() as txn:
            entries = txn.stat()["entries"]
            first = next(iter(txn.cursor()), None)
        env.close()
    except Exception:
        return None
    return entries, None if first is None else first[1]


def _lmdb_datum_shape(source: str) -> tuple[int, int, int] | None:
    """(C, H, W) of the first Datum of an LMDB, or None when it cannot be read."""
    peek = _lmdb_peek(source)
    if peek is None or peek[1] is None:
        return None
    try:
        datum = caffe_pb2.Datum.FromString(peek[1])
    except Exception:
        return None
    if datum.encoded or not (datum.channels and datum.height and datum.width):
        return None  # an encoded image: its size is known only after decoding
    return datum.channels, datum.height, datum.width


def lmdb_test_coverage(net: caffe_pb2.NetParameter, test_iter: int) -> list[str]:
    """Warnings for a test pass that does not read its LMDB exactly once: Caffe averages
    over ``test_iter`` batches, wrapping around, so 8 x 100 on 797 images counts 3 of them
    twice in the accuracy, and too few batches leave images untested."""
    warnings = []
    for layer in net.layer:
        dp = layer.data_param
        lmdb = layer.type == "Data" and dp.backend == caffe_pb2.DataParameter.LMDB
        if not lmdb or not included(layer, caffe_pb2.TEST):
            continue
        peek = _lmdb_peek(dp.source)
        entries, read = peek[0] if peek else 0, test_iter * dp.batch_size
        if not entries or read == entries:
            continue
        if read > entries:
            what = f"{read - entries} counted twice"
        else:
            what = f"{entries - read} never tested"
        warnings.append(
            f"a test pass reads test_iter {test_iter} x batch_size {dp.batch_size} = {read} "
            f"images of {dp.source!r} ({layer.name}), which holds {entries}: {what} in the "
            f"test accuracy (test_iter x batch_size = {entries} reads each image once)"
        )
    return warnings


def _mean_shape(path: str) -> tuple[int, int, int] | None:
    """(C, H, W) of a mean .binaryproto, or None when it cannot be read."""
    try:
        blob = caffe_pb2.BlobProto.FromString(Path(path).read_bytes())
    except Exception:
        return None
    shape, _ = blob_shape(blob)
    return tuple(int(d) for d in shape[-3:]) if len(shape) >= 3 else None


def _check_batches(
    layer: caffe_pb2.LayerParameter, known: list[_Blob | None], out: _Collector, phase: str
) -> None:
    compared = layer.type in (IRG_VECTOR, "EuclideanLoss") or any(
        k is not None and k.irg for k in known
    )
    sized = [(b, k) for b, k in zip(layer.bottom, known) if k is not None and k.n is not None]
    if not compared or len({k.n for _, k in sized}) < 2:
        return
    described = ", ".join(
        f"{b!r} ({k.owner or 'unowned'}, N={k.n} from {k.n_from})" for b, k in sized
    )
    out.add(
        "batch-mismatch",
        layer.name,
        f"{layer.type} compares blobs of different batch size N: {described}; IRG terms "
        "relate the same N instances on both sides (teacher and student, or two layers of "
        "one network), so feed them from the same batch",
        phase,
    )


def _check_teacher(
    net: caffe_pb2.NetParameter, prefixes: _Prefixes, owners: dict[str, str], out: _Collector
) -> None:
    layers = [la for la in net.layer if la.type not in DATA_TYPES]
    roles = {prefixes.owner(la) for la in layers}
    if not {TEACHER, STUDENT} <= roles:
        return  # a single network: nothing is meant to be frozen
    for layer in layers:
        if prefixes.owner(layer) != TEACHER:
            continue
        _check_frozen(layer, out)
        if _is_loss(layer.type):
            sources = {owners.get(b, "") for b in layer.bottom}
            weight = layer.loss_weight[0] if layer.loss_weight else 1.0
            if TEACHER in sources and sources <= {TEACHER, DATA} and weight != 0:
                out.add(
                    "teacher-loss",
                    layer.name,
                    f"teacher-only {layer.type} has loss weight {weight:g}: the frozen teacher "
                    "gets gradients that are thrown away and its loss is added to the "
                    "reported total; set loss_weight: 0",
                    severity=WARNING,
                )


def _registered_types() -> frozenset[str]:
    """The layer types of the pycaffe in use (empty when pycaffe cannot be imported)."""
    try:
        import caffe

        return frozenset(caffe.layer_type_list())
    except (ImportError, AttributeError):
        return frozenset()


def check_net(
    net: caffe_pb2.NetParameter,
    teacher_prefix: str = "",
    student_prefix: str = STUDENT_PREFIX,
    stages: Sequence[str] = (),
    check_files: bool = True,
) -> list[Problem]:
    """Every problem found in ``net`` (empty list: ready to train).

    ``check_files``: also report data sources and mean files that do not exist.
    """
    if teacher_prefix == student_prefix:
        raise ValueError(f"teacher and student prefixes must differ, both are {teacher_prefix!r}")
    out = _Collector()
    if net.layers:
        out.add(
            "unsupported",
            net.layers[0].name,
            "V1 'layers' entries: upgrade the net first (Caffe's upgrade_net_proto_text)",
        )
    if not net.layer and not net.layers:
        out.add("empty-net", net.name or "(net)", "the net has no layers")
    known_types = _registered_types()
    for layer in net.layer:
        if known_types and layer.type not in known_types:
            close = difflib.get_close_matches(layer.type, sorted(known_types), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            out.add(
                "unknown-type",
                layer.name,
                f"layer type {layer.type!r} is not registered in this Caffe{hint} (Caffe aborts)",
            )
    prefixes = _Prefixes(teacher_prefix, student_prefix)
    owners: dict[str, str] = {}
    for phase in PHASES:
        for name, blob in _check_phase(net, phase, stages, prefixes, out).items():
            owners.setdefault(name, blob.owner)
    for layer in net.layer:
        _check_layer_static(layer, out)
        if check_files:
            _check_files(layer, out)
    _check_teacher(net, prefixes, owners, out)
    return out.result()


def build_parser() -> argparse.ArgumentParser:
    """``check``'s options."""
    parser = ArgumentParser(
        prog="check_net",
        description="Pre-flight checks of Caffe (IRG distillation) nets.",
    )
    parser.add_argument("nets", nargs="+", metavar="NET.prototxt", help="net prototxts to check")
    parser.add_argument(
        "--teacher-prefix", default="", help="name prefix of teacher layers ('': none)"
    )
    parser.add_argument(
        "--student-prefix", default=STUDENT_PREFIX, help="name prefix of student layers"
    )
    parser.add_argument(
        "--stage", action="append", default=[], help="net state stage (repeat for several)"
    )
    parser.add_argument(
        "--no-files",
        action="store_true",
        help="skip the check that data sources and mean files exist (paths as Caffe "
        "would open them from the current folder)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """``check_net NET.prototxt...``: print every problem; exit 1 if any is an error."""
    args = build_parser().parse_args(argv)
    failed = False
    for path in args.nets:
        try:
            problems = check_net(
                read_net(path),
                args.teacher_prefix,
                args.student_prefix,
                args.stage,
                check_files=not args.no_files,
            )
        except (OSError, ValueError) as exc:
            print(f"{path}: ERROR {exc}")
            failed = True
            continue
        errors = sum(p.is_error for p in problems)
        for problem in problems:
            print(f"{path}: {problem}")
        print(f"{path}: {errors} error(s), {len(problems) - errors} warning(s)")
        failed = failed or errors > 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
