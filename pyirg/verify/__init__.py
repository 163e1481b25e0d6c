"""Check the Caffe IRG layers and the generated distillation nets against the PyTorch reference.

``python tools/verify.py [--full] [--json OUT] [--no-nets] [--seed S]`` (``pyirg verify``).

- :mod:`~pyirg.verify.layer_compare`: each layer in Caffe, PyTorch and NumPy, on ordinary
  and hard inputs, in every ``irg_param`` setting (with the NumPy reference).
- :mod:`~pyirg.verify.net_compare`: whole distillation nets, pycaffe vs PyTorch.
- :mod:`~pyirg.verify.report`: rows, tolerances, error measures, the table and the JSON.
- :mod:`~pyirg.verify.cli`: ``main(argv)``, quick and full mode, exit status.
"""
