"""pyirg: Instance Relationship Graph (IRG) knowledge distillation around Caffe.

The Caffe layers live in ``caffe_layers/``; this package generates the nets that
use them, trains them through pycaffe, and checks them against PyTorch.
"""

__version__ = "0.1.0"
