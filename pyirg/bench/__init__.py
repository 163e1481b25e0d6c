"""Benchmark of the IRG layers: our Caffe layers against PyTorch, the GEMM bound, and training.

Why this exists: the layers' reason to be (README, "How they compute") is that one GEMM
per pass replaces the authors' N^2 per-pair loop. That claim is only worth something if
it is measured the way a user meets it: a whole pycaffe net's forward + backward, next
to what a competent PyTorch user would write, next to the BLAS time the algorithm
cannot avoid (through libcaffe's own OpenBLAS), and as a share of a real distillation
iteration. Everything runs in one process, implementations interleaved per repetition,
because the machines we have are small and shared: a median with its spread from
side-by-side samples is comparable, two runs minutes apart are not. docs/benchmarks.md
says what each timing runs and records a full run.

Modules: ``timing`` (how much runs, how a sample is taken), ``blas`` (libcaffe's
OpenBLAS: the bound, its threads, the kernel/MKL comparison), ``layers`` (the one-layer
nets of the IRG and REFILLED layers against PyTorch and the bound, the targets, the
memory), ``torch_forms`` (the PyTorch side, torch alone), ``training`` (the layers' share
of ``solver.step(1)``), ``report`` (bench.md, the console, bench.png, all from
bench.json), ``cli`` (``pyirg bench``) and ``ddp`` (``pyirg bench-ddp``).
"""
