"""Load the solver and its train net, with file references resolved before Caffe sees them.

Caffe resolves a solver's relative paths from the cwd and aborts the process
when one is missing; resolving here first turns that into a :class:`TrainError`
that names the file, and lets a solver refer to files next to itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from google.protobuf import text_format

from pyirg.data.fsutil import atomic_write_text, regular_file
from pyirg.train.common import PathLike, caffe_pb2
from pyirg.train.errors import TrainError


def parse_text(path: Path, message: Any, what: str) -> Any:
    """Merge a text proto into ``message``; read and parse errors name the file."""
    try:
        text = regular_file(path, what).read_text()
    except UnicodeDecodeError as e:  # before ValueError, which it is
        raise TrainError(f"{path}: not a text {what} (a binary .caffemodel?): {e}") from e
    except ValueError as e:
        raise TrainError(str(e)) from e
    except OSError as e:
        raise TrainError(f"{path}: cannot read {what}: {e}") from e
    try:
        text_format.Merge(text, message)
    except text_format.ParseError as e:
        raise TrainError(f"{path}: not a valid {what}: {e}") from e
    return message


def load_solver_param(solver: PathLike | Any) -> tuple[Any, Path | None]:
    """Return a copy of the SolverParameter and the directory of its file (if any)."""
    pb = caffe_pb2()
    if isinstance(solver, pb.SolverParameter):
        param = pb.SolverParameter()
        param.CopyFrom(solver)
        return param, None
    path = Path(solver)
    return parse_text(path, pb.SolverParameter(), "SolverParameter"), path.resolve().parent


def _resolve(name: str, base: Path | None, what: str) -> str:
    """Resolve a solver's relative file reference: from the cwd as Caffe does, else its dir."""
    path = Path(name)
    if path.is_absolute() or path.exists():
        if not path.exists():
            raise TrainError(f"{what} '{name}' does not exist")
        return str(path.resolve())
    if base is not None and (base / path).exists():
        return str((base / path).resolve())
    raise TrainError(f"{what} '{name}' not found (looked in {Path.cwd()} and {base})")


def prepare_solver_param(
    solver: PathLike | Any, net: PathLike | Any | None = None, *, out_dir: Path | None = None
) -> tuple[Any, Any, str]:
    """Load the solver, point it at ``net`` (a file or NetParameter) and parse the train net.

    Returns (solver parameter, train NetParameter, a name for messages).  A
    NetParameter given as ``net`` is written to ``out_dir/net.prototxt``.
    """
    pb = caffe_pb2()
    param, base = load_solver_param(solver)
    if net is not None:
        if isinstance(net, pb.NetParameter):
            if out_dir is None:
                raise ValueError("a NetParameter net needs an out_dir to be written to")
            net_path = out_dir / "net.prototxt"
            atomic_write_text(net_path, text_format.MessageToString(net))
        else:
            net_path = Path(net)
            if not net_path.is_file():
                raise TrainError(f"net file '{net}' does not exist")
        for name in ("net_param", "train_net", "train_net_param"):
            param.ClearField(name)
        param.net = str(net_path.resolve())
    else:
        for name in ("net", "train_net"):
            if param.HasField(name):
                setattr(param, name, _resolve(getattr(param, name), base, f"solver {name}"))
    for i, test_net in enumerate(param.test_net):
        param.test_net[i] = _resolve(test_net, base, "solver test_net")

    if param.HasField("net_param"):
        return param, param.net_param, "solver net_param"
    if param.HasField("train_net_param"):
        return param, param.train_net_param, "solver train_net_param"
    path = param.net or param.train_net
    if not path:
        raise TrainError("the solver names no net (net, net_param, train_net) and none was given")
    return param, parse_text(Path(path), pb.NetParameter(), "NetParameter"), path
