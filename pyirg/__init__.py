"""pyirg: Instance Relationship Graph (IRG) knowledge distillation around Caffe.

The Caffe layers live in ``caffe_layers/``; this package generates the nets that
use them, trains them through pycaffe, and checks them against PyTorch.

Importing it sets what must be set before pycaffe loads libcaffe, since every pyirg
command, test and benchmark imports this package first: the OpenBLAS kernel libcaffe
will run on (see :mod:`pyirg.blas`), and glog's level (Caffe's INFO and WARNING lines
are noise around pyirg's own output; set ``GLOG_minloglevel=0`` to see them).
"""

import os

from pyirg.blas import ensure_coretype

__version__ = "0.1.0"

ensure_coretype()
os.environ.setdefault("GLOG_minloglevel", "2")
