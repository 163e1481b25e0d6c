"""Independent PyTorch reference for the IRG layers, losses and the CIFAR ResNet.

Written from the paper's formulas, not from the Caffe sources, and importing nothing from
the rest of pyirg (its ResNets and the layers its losses compare are described here too),
so that agreement between the two is evidence rather than a tautology.

- :mod:`pyirg.torch.layers`: ``BatchEuclideanMap`` / ``BatchEuclideanVector``.
- :mod:`pyirg.torch.losses`: the paper's losses (IRG, IRG-t, MTK) as ``IRGLoss``.
- :mod:`pyirg.torch.resnet`: the CIFAR ResNet with Caffe's layer names, its IRG-t pairs.
- :mod:`pyirg.torch.caffemodel`: weights between ``.caffemodel`` files and the ResNet.
"""
