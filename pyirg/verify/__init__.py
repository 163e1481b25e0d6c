"""Check the Caffe IRG and REFILLED layers and the generated distillation nets against the
PyTorch reference.

``python tools/verify.py [--full] [--json OUT] [--no-nets] [--no-refilled] [--seed S]``
(``pyirg verify``).

- :mod:`~pyirg.verify.layer_compare`: each layer in Caffe, PyTorch and NumPy, on ordinary
  and hard inputs, in every ``irg_param`` setting (with the NumPy reference).
- :mod:`~pyirg.verify.refilled_compare`: the REFILLED loss layers in Caffe against
  :mod:`pyirg.torch.refilled`, every mode, on random batches and on hard ones (ties,
  duplicates, zero rows, nothing to distill, absent classes).
- :mod:`~pyirg.verify.net_compare`: whole distillation nets, pycaffe vs PyTorch.
- :mod:`~pyirg.verify.report`: rows, tolerances, error measures, the table and the JSON.
- :mod:`~pyirg.verify.cli`: ``main(argv)``, quick and full mode, exit status.
"""
