"""The ``pyirg`` console command: one entry point whose subcommands mirror tools/.

Each subcommand lives in its own module with a ``main(argv)``; they are
imported only when chosen, so ``pyirg gen --help`` does not pay for torch.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

#: subcommand -> (module, one-line help). tools/<script>.py calls the same mains.
COMMANDS: dict[str, tuple[str, str]] = {
    "gen": ("pyirg.gen", "generate teacher, student and distillation prototxts"),
    "check": ("pyirg.check", "check a net prototxt before Caffe aborts on it"),
    "prepare-data": ("pyirg.prepare", "convert CIFAR-10/100 or digits to LMDB + mean files"),
    "train": ("pyirg.train.cli", "train a plain or a distillation net through pycaffe"),
    "main": ("pyirg.experiment", "the main job: distillation on the embedded digits data"),
    "verify": ("pyirg.verify.cli", "compare the Caffe layers and nets with the PyTorch reference"),
    "export-onnx": ("pyirg.export", "export a trained student to ONNX and check it"),
    "bench": ("pyirg.bench.cli", "benchmark the layers against PyTorch and the GEMM bound"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: pyirg COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {text}" for name, (_, text) in COMMANDS.items()]
    lines += [
        "",
        "pyirg COMMAND --help shows a command's options; pyirg --version shows the",
        "versions and the BLAS kernel Caffe runs on.",
    ]
    return "\n".join(lines)


def version_line() -> str:
    """pyirg's version, the Caffe it imports, and the BLAS kernel that Caffe runs on."""
    from pyirg import __version__
    from pyirg.blas import kernel_line

    try:
        import caffe

        blas = kernel_line()
    except (ImportError, OSError, RuntimeError) as e:
        return f"pyirg {__version__}; pycaffe not importable ({e}): source tools/env.sh"
    return f"pyirg {__version__}; Caffe {Path(caffe.__file__).resolve().parents[2]}; {blas}"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0
    if args[0] == "--version":
        print(version_line())
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"pyirg: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
