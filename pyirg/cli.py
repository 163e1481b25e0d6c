"""The ``pyirg`` console command: one entry point whose subcommands mirror tools/.

Each subcommand lives in its own module with a ``main(argv)``; they are
imported only when chosen, so ``pyirg gen --help`` does not pay for torch.
"""

from __future__ import annotations

import importlib
import sys

#: subcommand -> (module, one-line help). tools/<script>.py calls the same mains.
COMMANDS: dict[str, tuple[str, str]] = {
    "gen": ("pyirg.gen", "generate teacher, student and distillation prototxts"),
    "check": ("pyirg.check", "check a net prototxt before Caffe aborts on it"),
    "prepare-data": ("pyirg.prepare", "convert CIFAR-10/100 or digits to LMDB + mean files"),
    "train": ("pyirg.train", "train a plain or a distillation net through pycaffe"),
    "main": ("pyirg.experiment", "the main job: distillation on the embedded digits data"),
    "verify": ("pyirg.verify", "compare the Caffe layers and nets with the PyTorch reference"),
    "export-onnx": ("pyirg.export", "export a trained student to ONNX and check it"),
    "bench": ("pyirg.bench", "benchmark the layers against PyTorch and the GEMM bound"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: pyirg COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "pyirg COMMAND --help shows a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"pyirg: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
