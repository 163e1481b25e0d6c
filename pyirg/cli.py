"""The ``pyirg`` console command: one entry point whose subcommands mirror tools/.

Each subcommand lives in its own module with a ``main(argv)``; they are
imported only when chosen, so ``pyirg gen --help`` does not pay for torch.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
from pathlib import Path

#: subcommand -> (module, one-line help). tools/<script>.py calls the same mains.
COMMANDS: dict[str, tuple[str, str]] = {
    "gen": ("pyirg.gen", "generate teacher, student and distillation prototxts"),
    "check": ("pyirg.check", "check a net prototxt before Caffe aborts on it"),
    "prepare-data": ("pyirg.prepare", "convert CIFAR-10/100, CUB-200, digits to LMDB + mean files"),
    "train": ("pyirg.train.cli", "train a plain or a distillation net through pycaffe"),
    "main": ("pyirg.experiment", "the main job: distillation on the embedded digits data"),
    "refilled": ("pyirg.two_stage", "REFILLED distillation: both stages through pycaffe"),
    "refilled-demo": ("pyirg.refilled_demo", "REFILLED on the digits: cross-task and standard"),
    "verify": ("pyirg.verify.cli", "compare the Caffe layers and nets with the PyTorch reference"),
    "export-onnx": ("pyirg.export", "export a trained student to ONNX and check it"),
    "bench": ("pyirg.bench.cli", "benchmark the layers against PyTorch and the GEMM bound"),
    "torch-train": ("pyirg.torch_train", "distillation training in PyTorch (torchrun: DDP)"),
    "bench-ddp": ("pyirg.bench.ddp", "PyTorch distillation on 1 and 2 processes: gathers' cost"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: pyirg [--debug] COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {text}" for name, (_, text) in COMMANDS.items()]
    lines += [
        "",
        "pyirg COMMAND --help shows a command's options; pyirg --version shows the",
        "versions and the BLAS kernel Caffe runs on; pyirg --debug COMMAND ... shows the",
        "traceback of an error (else one line).",
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


def _expected() -> tuple[type[BaseException], ...]:
    """Failures a user can fix: one line naming the file, option or layer, exit status 2.
    Anything else is a bug and keeps its traceback; ``--debug`` shows it for these too."""
    from google.protobuf.message import DecodeError
    from google.protobuf.text_format import ParseError

    from pyirg.data.core import DataError
    from pyirg.train import TrainError

    return (TrainError, DataError, ValueError, OSError, ParseError, DecodeError)


def debugging() -> bool:
    """Whether ``pyirg --debug`` (or PYIRG_DEBUG=1) asked for tracebacks instead of one line."""
    return os.environ.get("PYIRG_DEBUG") == "1"


def one_line_error(prog: str, error: BaseException) -> int:
    """``prog: error: ...`` on stderr and exit status 2 for a failure the user can fix, or
    the traceback under ``--debug``: what every command's ``main`` does with its errors."""
    if debugging():
        raise error
    print(f"{prog}: error: {error}", file=sys.stderr)
    return 2


def _fix_for_import(error: ImportError) -> str:
    import importlib.util

    if importlib.util.find_spec("caffe") is None or "caffe" in str(error):
        return (
            f"pycaffe is not importable ({error}); run `source tools/env.sh` first "
            "(after `bash tools/build_caffe.sh`)"
        )
    return f"a module is missing ({error}); `bash tools/build_caffe.sh` installs them"


def main(argv: list[str] | None = None) -> int:
    """``pyirg [--debug] COMMAND ARGS``; ``tools/<script>.py`` calls this with its command."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["--debug"]:
        os.environ["PYIRG_DEBUG"] = "1"
        args = args[1:]
    debug = debugging()
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
    try:
        module = importlib.import_module(COMMANDS[name][0])
        return int(module.main(rest) or 0)
    except ImportError as e:
        if debug:
            raise
        print(f"pyirg {name}: error: {_fix_for_import(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        if debug:
            raise
        # A training stopped by SIGINT/SIGTERM (pyirg.train.TrainingInterrupted) says which
        # signal, where it stopped and what it saved; a bare Ctrl-C is SIGINT.
        signum = getattr(e, "signum", signal.SIGINT)
        result = getattr(e, "result", None)
        how = (
            "interrupted"
            if signum == signal.SIGINT
            else f"stopped by {signal.Signals(signum).name}"
        )
        if result is not None:
            how += f" at iteration {result.iterations} (saved {result.solverstate})"
        print(
            f"pyirg {name}: {how}; run the same command again to resume (train: add --resume)",
            file=sys.stderr,
        )
        return 128 + signum
    except _expected() as e:
        if debug:
            raise
        text = " ".join(str(e).split()) or type(e).__name__
        print(f"pyirg {name}: error: {text} (--debug shows the traceback)", file=sys.stderr)
        return 2


def tool(command: str) -> None:
    """What every ``tools/*.py`` wrapper runs: the same code as ``pyirg COMMAND``."""
    sys.exit(main([command, *sys.argv[1:]]))


if __name__ == "__main__":
    sys.exit(main())
