"""Check teacher weights against the net before Caffe's ``copy_from`` sees them.

``copy_from`` silently leaves a teacher layer at its random initialisation when
the .caffemodel lacks it, and aborts the process on a shape mismatch; these
checks refuse such weights first, naming the layers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pyirg.caffeio import CaffeFileError, PathLike, all_layers, blob_fits, blob_shape, read_binary
from pyirg.data.fsutil import regular_file
from pyirg.train import TeacherWeightsError

#: Per layer, each parameter blob's shape and whether it uses the legacy 4-axis form.
BlobShapes = dict[str, list[tuple[tuple[int, ...], bool]]]
#: Per layer of a net, the shapes of its parameter blobs.
NetShapes = dict[str, list[tuple[int, ...]]]


def _weights_blobs(path: PathLike) -> BlobShapes:
    """Read only the blob shapes of a weights file; unreadable files raise with its name."""
    path = Path(path)
    if path.suffix == ".h5":
        import h5py

        try:
            regular_file(path, "weights file")
            with h5py.File(path, "r") as f:
                data = f["data"]
                return {
                    name: [(tuple(data[name][str(i)].shape), False) for i in range(len(data[name]))]
                    for name in data
                }
        except (OSError, KeyError) as e:
            raise TeacherWeightsError(f"{path}: not Caffe HDF5 weights: {e}") from e
        except ValueError as e:
            raise TeacherWeightsError(str(e)) from e
    try:
        param = read_binary(path, "weights file")
    except (CaffeFileError, ValueError) as e:
        raise TeacherWeightsError(str(e)) from e
    return {layer.name: [blob_shape(b) for b in layer.blobs] for layer in all_layers(param)}


def net_param_shapes(nets: Sequence[Any]) -> NetShapes:
    """Layer name -> parameter blob shapes over the given pycaffe nets (first wins)."""
    shapes: NetShapes = {}
    for net in nets:
        for name, blobs in net.params.items():
            shapes.setdefault(name, [tuple(b.data.shape) for b in blobs])
    return shapes


def _some(items: Sequence[str], most: int = 6, sep: str = ", ") -> str:
    """The first ``most`` of ``items`` and how many more: a refusal stays one readable
    line when a whole net's layers are wrong (a teacher of another depth)."""
    if len(items) <= most:
        return sep.join(items)
    return f"{sep.join(items[:most])}{sep}... ({len(items) - most} more, {len(items)} in all)"


def check_weights(
    net_shapes: NetShapes,
    weights: PathLike,
    *,
    required: Sequence[str] = (),
    role: str = "teacher",
) -> None:
    """Refuse weights that Caffe's copy_from would abort on or leave ``required`` layers unset.

    Every layer present in both must have the same number of blobs and the same
    shapes (Caffe aborts otherwise); every layer in ``required`` must be present
    with its blobs (Caffe would silently keep the random initialisation).
    """
    source = _weights_blobs(weights)
    missing = [name for name in required if not source.get(name)]
    if missing:
        raise TeacherWeightsError(
            f"{weights}: no weights for {role} layer(s) {_some(missing)}; "
            "they would stay uninitialised"
        )
    problems = []
    for name, target in net_shapes.items():
        got = source.get(name)
        if got is None:
            continue
        if len(got) != len(target):
            problems.append(
                f"layer '{name}': {len(got)} blobs in the weights, {len(target)} in the net"
            )
            continue
        for i, ((shape, legacy), want) in enumerate(zip(got, target)):
            if not blob_fits(shape, legacy, want):
                problems.append(f"layer '{name}' blob {i}: weights {shape} vs net {want}")
    if problems:
        raise TeacherWeightsError(f"{weights}: shape mismatch: {_some(problems, sep='; ')}")


def require_finite(net: Any, layers: Sequence[str], source: PathLike) -> None:
    """Refuse weights with NaN or inf: a NaN teacher can look harmless (an IRG map of NaN
    features is normalized to all zeros) while the student is distilled toward nothing."""
    bad = [
        name
        for name in layers
        if name in net.params and not all(np.isfinite(b.data).all() for b in net.params[name])
    ]
    if bad:
        raise TeacherWeightsError(
            f"{source}: non-finite (NaN/inf) weights in layer(s) {_some(bad)}"
        )


def teacher_layers(net_shapes: NetShapes, student_prefix: str) -> list[str]:
    """Layers with parameters that belong to the teacher (no student prefix)."""
    return [name for name in net_shapes if not name.startswith(student_prefix)]


def load_teacher(
    solver: Any,
    teacher_weights: PathLike | None,
    student_prefix: str,
    source: str,
    *,
    required: bool,
) -> bool:
    """Check and load teacher weights; return whether the net is a distillation net.

    A net is a distillation net when some layer carries the student prefix; its
    other layers with parameters are the teacher's, and must all come from
    ``teacher_weights`` (``required`` is False when a snapshot will supply them).
    """
    nets = [solver.net, *solver.test_nets]
    shapes = net_param_shapes(nets)
    distill = any(n.startswith(student_prefix) for n in solver.net._layer_names)
    teacher = teacher_layers(shapes, student_prefix) if distill else []
    if teacher_weights is not None:
        if not distill:
            raise TeacherWeightsError(
                f"{source}: no layer carries the student prefix '{student_prefix}', so the "
                "net is not a distillation net; teacher weights do not apply"
            )
        check_weights(shapes, teacher_weights, required=teacher)
        for net in nets:  # test-only layers are not shared from the train net
            net.copy_from(str(teacher_weights))
        require_finite(solver.net, teacher, teacher_weights)
    elif teacher and required:
        raise TeacherWeightsError(
            f"{source}: teacher layer(s) {_some(teacher)} have parameters "
            "but no teacher weights were given (--teacher-weights)"
        )
    return distill


def load_init_weights(solver: Any, weights: PathLike, student_prefix: str) -> None:
    """Start the trained layers from ``weights`` (by layer name) instead of their fillers.

    Every trained layer with parameters (the student's in a distillation net, every
    layer otherwise) must be in the file with the net's shapes: a missing one would
    silently keep its random initialisation, which defeats the point (identical
    starting weights for several nets).
    """
    nets = [solver.net, *solver.test_nets]
    shapes = net_param_shapes(nets)
    distill = any(n.startswith(student_prefix) for n in solver.net._layer_names)
    trained = [n for n in shapes if n.startswith(student_prefix)] if distill else list(shapes)
    check_weights(shapes, weights, required=trained, role="trained")
    for net in nets:
        net.copy_from(str(weights))
    require_finite(solver.net, trained, weights)
