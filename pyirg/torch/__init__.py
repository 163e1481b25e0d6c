"""Independent PyTorch reference for the IRG layers, losses and the CIFAR ResNet, and REFILLED.

Written from the paper's formulas, not from the Caffe sources; the layers, losses, ResNets
and REFILLED import nothing from the rest of pyirg (the layers its losses compare are
described here too), so that agreement between the two is evidence rather than a tautology.

- :mod:`pyirg.torch.layers`: ``BatchEuclideanMap`` / ``BatchEuclideanVector``.
- :mod:`pyirg.torch.losses`: the paper's losses (IRG, IRG-t, MTK) as ``IRGLoss``.
- :mod:`pyirg.torch.resnet`: the CIFAR ResNet with Caffe's layer names, its IRG-t pairs.
- :mod:`pyirg.torch.caffemodel`: weights between ``.caffemodel`` files and the ResNet.
- :mod:`pyirg.torch.distributed`: IRG's graph over every rank's instances.
- :mod:`pyirg.torch.refilled`: REFILLED's losses (Ye, Lu, Zhan, CVPR 2020): triplet / tuple
  relations mined on the student, and the local-center KD of the batch's classes.
"""
