"""pyirg: Instance Relationship Graph (IRG) knowledge distillation around Caffe.

The Caffe layers live in ``caffe_layers/``; this package generates the nets that
use them, trains them through pycaffe, and checks them against PyTorch.

Importing it chooses the OpenBLAS kernel libcaffe will run on (see
:mod:`pyirg.blas`): that must happen before pycaffe loads libcaffe, and every
pyirg command, test and benchmark imports this package first.
"""

from pyirg.blas import ensure_coretype

__version__ = "0.1.0"

ensure_coretype()
