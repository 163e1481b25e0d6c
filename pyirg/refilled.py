"""REFILLED distillation nets (Ye, Lu, Zhan, CVPR 2020) and what its two stages need
besides training: the teacher's class centers and the nearest-class-mean accuracy.

- **Stage 1** (:func:`stage1_net`): a frozen teacher's and the student's embeddings (the
  globally pooled penultimate features) feed ``TripletRelationLoss``; there is no
  cross-entropy. The student's classifier is in the net but unused, so the stage-1
  snapshot holds every student layer and stage 2 starts from it by name.
- **Stage 2** (:func:`stage2_net`): the student's cross-entropy (``SoftmaxWithLoss``) plus
  ``LocalCenterKDLoss`` between the student's logits and the teacher's embedding scored
  against the teacher's class centers. The centers are the KD layer's parameter blob
  (``center_kd``, never trained): :func:`class_centers` of the teacher's
  :func:`embeddings` of the training data, which :func:`write_centers` adds to a copy of
  the teacher's .caffemodel, so that the training driver loads them with the teacher,
  checked like every teacher layer.
- The student embedding after stage 1 is judged by :func:`ncm_accuracy`, a
  nearest-class-mean classifier on the L2-normalized embedding, as the authors judge it.

Teacher and student may be a CIFAR ResNet (:mod:`pyirg.arch`), a wide ResNet or a
MobileNet (:mod:`pyirg.backbones`); the teacher may have been trained on other classes
than the student's (cross-task): only its embedding is used.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from caffe import layers as L
from caffe.net_spec import NetSpec, Top
from caffe.proto import caffe_pb2

from pyirg.arch import ResNetSpec
from pyirg.backbones import MobileNetSpec, WideResNetSpec, add_embedding, add_logits
from pyirg.caffeio import PathLike, all_layers, blob_proto, caffe_net, read_binary, write_binary
from pyirg.distill import STUDENT_PREFIX
from pyirg.netspec import (
    DEPLOY_INPUT,
    FROZEN,
    TEST,
    DataConfig,
    add_classifier,
    add_data,
    add_features,
    batchnorm_memory,
    spec_label,
    to_net,
)
from pyirg.options import numbers_problem

Network = ResNetSpec | WideResNetSpec | MobileNetSpec
MODES = tuple(caffe_pb2.RelationParameter.Mode.keys())
CENTERS = tuple(caffe_pb2.RelationParameter.Centers.keys())
#: Layer names: the stage-1 loss and the stage-2 KD layer (whose blob holds the centers).
RELATION_LOSS, CENTER_KD = "relation_loss", "center_kd"
#: The centers blob is a parameter Caffe's solver must leave alone.
FIXED = (FROZEN,)


def label(spec: Network) -> str:
    """``ResNet-20``, ``WRN-16-2``, ``MobileNet-0.5``."""
    return spec_label(spec) if isinstance(spec, ResNetSpec) else spec.label


def embedding_size(spec: Network) -> int:
    return spec.feature_channels if isinstance(spec, ResNetSpec) else spec.embedding_size


def _network(
    ns: NetSpec, spec: Network, bottom: Top, prefix: str, frozen: bool
) -> tuple[Top, Callable[[], Top]]:
    """The embedding of ``spec`` on ``bottom``, and a function adding its classifier."""
    if isinstance(spec, ResNetSpec):
        pooled = add_features(ns, spec, bottom, prefix, frozen)[spec.pool]
        return pooled, lambda: add_classifier(ns, spec, pooled, prefix, frozen)
    # Only where asked: a teacher of other classes (cross-task) has a classifier of
    # another size, which the student's data could not load.
    pooled = add_embedding(ns, spec, bottom, prefix, frozen)
    return pooled, lambda: add_logits(ns, spec, pooled, prefix, frozen)


@dataclass(frozen=True)
class RefilledConfig:
    """One REFILLED teacher -> student pair, with both stages' loss settings.

    Defaults are the authors': semi-hard margin 0.2, tau1 4, scale 1000 (TRIPLET, or the
    improved TUPLE), global centers, tau2 2, teaching weight 100.
    """

    teacher: Network
    student: Network
    data: DataConfig = field(default_factory=DataConfig)
    mode: str = "TRIPLET"
    margin: float = 0.2
    tau1: float = 4.0
    scale: float = 1000.0
    centers: str = "GLOBAL"
    tau2: float = 2.0
    teaching_weight: float = 100.0
    student_prefix: str = STUDENT_PREFIX
    name: str = "refilled"
    #: The student's BatchNorm memory: PyTorch's momentum 0.1, which the authors train with.
    bn_fraction: float = 0.9

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.centers not in CENTERS:
            raise ValueError(f"centers must be one of {CENTERS}, got {self.centers!r}")
        positive = {"tau1": True, "tau2": True}  # the taus divide
        problem = numbers_problem(
            self, {**positive, "margin": False, "scale": False, "teaching_weight": False}, label=str
        )
        if problem:
            raise ValueError(problem)
        if not self.student_prefix:
            raise ValueError("the student needs a name prefix (the teacher has none)")
        for role, spec in (("teacher", self.teacher), ("student", self.student)):
            if spec.in_channels != self.data.dataset.channels:
                raise ValueError(
                    f"the {role} {label(spec)} takes {spec.in_channels}-channel input, the "
                    f"data set {self.data.dataset.name!r} has {self.data.dataset.channels}"
                )


def plain_net(spec: Network, data: DataConfig, prefix: str = "") -> caffe_pb2.NetParameter:
    """``spec`` alone with cross-entropy and TEST accuracy: a teacher or a baseline."""
    ns = NetSpec()
    images, labels = add_data(ns, data)
    _, classifier = _network(ns, spec, images, prefix, frozen=False)
    logits = classifier()
    ns[prefix + "SoftmaxWithLoss1"] = L.SoftmaxWithLoss(logits, labels)
    ns[prefix + "Accuracy1"] = L.Accuracy(logits, labels, include={"phase": TEST})
    return to_net(ns, f"{label(spec)}_alone", data)


def stage1_net(cfg: RefilledConfig) -> caffe_pb2.NetParameter:
    """Teacher (frozen) and student embeddings -> ``TripletRelationLoss``."""
    ns = NetSpec()
    images, labels = add_data(ns, cfg.data)
    teacher, _ = _network(ns, cfg.teacher, images, "", frozen=True)
    student, classifier = _network(ns, cfg.student, images, cfg.student_prefix, frozen=False)
    classifier()  # unused here; trained in stage 2 from this stage's snapshot
    ns[RELATION_LOSS] = L.TripletRelationLoss(
        student,
        teacher,
        labels,
        relation_param={
            "mode": getattr(caffe_pb2.RelationParameter, cfg.mode),
            "margin": cfg.margin,
            "tau1": cfg.tau1,
            "scale": cfg.scale,
        },
    )
    return batchnorm_memory(to_net(ns, f"{cfg.name}_stage1", cfg.data), cfg.bn_fraction)


def stage2_net(cfg: RefilledConfig) -> caffe_pb2.NetParameter:
    """The student's cross-entropy and TEST accuracy, plus ``LocalCenterKDLoss``."""
    ns = NetSpec()
    images, labels = add_data(ns, cfg.data)
    teacher, _ = _network(ns, cfg.teacher, images, "", frozen=True)
    _, classifier = _network(ns, cfg.student, images, cfg.student_prefix, frozen=False)
    logits = classifier()
    p = cfg.student_prefix
    ns[p + "SoftmaxWithLoss1"] = L.SoftmaxWithLoss(logits, labels)
    ns[p + "Accuracy1"] = L.Accuracy(logits, labels, include={"phase": TEST})
    ns[CENTER_KD] = L.LocalCenterKDLoss(
        logits,
        teacher,
        labels,
        param=list(FIXED),
        relation_param={
            "centers": getattr(caffe_pb2.RelationParameter, cfg.centers),
            "tau2": cfg.tau2,
            "teaching_weight": cfg.teaching_weight,
        },
    )
    return batchnorm_memory(to_net(ns, f"{cfg.name}_stage2", cfg.data), cfg.bn_fraction)


def embedding_net(
    spec: Network, shape: tuple[int, int, int, int], prefix: str = ""
) -> caffe_pb2.NetParameter:
    """An Input-fed net that gives ``spec``'s embedding (``embedding``) for a batch shape."""
    ns = NetSpec()
    ns[DEPLOY_INPUT] = L.Input(shape=[{"dim": list(shape)}])
    pooled, _ = _network(ns, spec, ns[DEPLOY_INPUT], prefix, frozen=True)
    ns["embedding"] = L.Flatten(pooled)
    net = ns.to_proto()
    net.name = f"{label(spec)}_embedding"
    return net


def embeddings(
    spec: Network, weights: PathLike, images: np.ndarray, prefix: str = "", batch: int = 100
) -> np.ndarray:
    """The network's embedding of each of ``images`` (N x C x H x W, as the nets see them:
    mean-subtracted and scaled), through pycaffe in TEST mode."""
    n = len(images)
    net = caffe_net(
        embedding_net(spec, (min(batch, n), *images.shape[1:]), prefix), "TEST", weights
    )
    out = []
    for start in range(0, n, batch):
        chunk = np.asarray(images[start : start + batch], dtype=np.float32)
        net.blobs[DEPLOY_INPUT].reshape(*chunk.shape)
        net.blobs[DEPLOY_INPUT].data[...] = chunk
        out.append(net.forward()["embedding"].copy())
    return np.concatenate(out).astype(np.float64)


def class_centers(features: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Per class, the L2-normalized mean of the (unnormalized) features: REFILLED's global
    centers. A class without an instance has no center: an error naming it."""
    labels = np.asarray(labels).astype(int)
    missing = [c for c in range(num_classes) if not np.any(labels == c)]
    if missing:
        raise ValueError(f"no instance of class(es) {missing}: their centers are undefined")
    means = np.stack([features[labels == c].mean(axis=0) for c in range(num_classes)])
    norms = np.linalg.norm(means, axis=1, keepdims=True)
    return np.divide(means, norms, out=np.zeros_like(means), where=norms > 0)


def write_centers(teacher_weights: PathLike, centers: np.ndarray, out: PathLike) -> Path:
    """A copy of the teacher's .caffemodel with the centers as the ``center_kd`` layer's
    blob, the file a stage-2 run takes as its teacher weights."""
    if not np.isfinite(centers).all():
        raise ValueError("the centers hold NaN or inf (a diverged teacher?)")
    model = read_binary(teacher_weights)
    if any(layer.name == CENTER_KD for layer in all_layers(model)):
        raise ValueError(f"{teacher_weights} already holds a {CENTER_KD!r} layer")
    layer = model.layer.add(name=CENTER_KD, type="LocalCenterKDLoss")
    layer.blobs.append(blob_proto(np.asarray(centers, dtype=np.float32)))
    write_binary(out, model)
    return Path(out)


def ncm_accuracy(
    train: np.ndarray, train_labels: np.ndarray, test: np.ndarray, test_labels: np.ndarray
) -> float:
    """Nearest-class-mean accuracy on L2-normalized embeddings: each test instance takes the
    class whose mean normalized training embedding is closest (Euclidean)."""

    def unit(x: np.ndarray) -> np.ndarray:
        x = x.reshape(len(x), -1)
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        return np.divide(x, norms, out=np.zeros_like(x, dtype=np.float64), where=norms > 0)

    classes = np.unique(train_labels)
    means = np.stack([unit(train)[train_labels == c].mean(axis=0) for c in classes])
    dist = ((unit(test)[:, None, :] - means[None, :, :]) ** 2).sum(axis=2)
    return float(np.mean(classes[dist.argmin(axis=1)] == np.asarray(test_labels)))


def describe(cfg: RefilledConfig) -> Mapping[str, Any]:
    """What a run's records say about the pair and the settings."""
    return {
        "teacher": label(cfg.teacher),
        "student": label(cfg.student),
        "embedding": [embedding_size(cfg.teacher), embedding_size(cfg.student)],
        "mode": cfg.mode,
        "margin": cfg.margin,
        "tau1": cfg.tau1,
        "scale": cfg.scale,
        "centers": cfg.centers,
        "tau2": cfg.tau2,
        "teaching_weight": cfg.teaching_weight,
    }
