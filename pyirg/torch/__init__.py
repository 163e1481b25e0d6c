"""Independent PyTorch reference for the IRG layers, losses and the CIFAR ResNet.

Written from the paper's formulas, not from the Caffe sources, so that agreement between
the two is evidence rather than a tautology.
"""

from __future__ import annotations

from pyirg.torch.layers import (
    BACKWARD_MODES,
    NORMALIZE_MODES,
    BatchEuclideanMap,
    BatchEuclideanVector,
    batch_euclidean_map,
    batch_euclidean_vector,
)
from pyirg.torch.losses import METHODS, IRGLoss, euclidean_loss, global_pool
from pyirg.torch.resnet import (
    CaffeBatchNorm2d,
    CifarResNet,
    Scale,
    caffe_name_map,
    stage_transform_pairs,
)

__all__ = [
    "BACKWARD_MODES",
    "METHODS",
    "NORMALIZE_MODES",
    "BatchEuclideanMap",
    "BatchEuclideanVector",
    "CaffeBatchNorm2d",
    "CifarResNet",
    "IRGLoss",
    "Scale",
    "batch_euclidean_map",
    "batch_euclidean_vector",
    "caffe_name_map",
    "euclidean_loss",
    "global_pool",
    "stage_transform_pairs",
]
