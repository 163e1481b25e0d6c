"""Export a trained student (deploy prototxt + .caffemodel) to ONNX, checked against Caffe.

``python tools/export_onnx.py DEPLOY.prototxt WEIGHTS.caffemodel OUT.onnx [--prefix stu_]
[--batch N] [--input X.npy] [--depth D] [--width W] [--opset 17] [--atol 1e-4]``

Why through PyTorch: the CIFAR ResNet already exists there with Caffe's layer names
(:class:`pyirg.torch.resnet.CifarResNet`), checked against Caffe by ``tools/verify.py``, and
``torch.onnx`` writes standard operators; a direct Caffe-to-ONNX translator would be a
second implementation of the same network to keep in step.

Steps, each of which fails with a one-line error naming the layer (exit status 2):

1. Read the deploy prototxt (what :func:`pyirg.netspec.deploy_net` writes for the
   student alone) and refuse any layer type outside Input, Convolution, BatchNorm, Scale,
   ReLU, Eltwise, Pooling, InnerProduct, Softmax.
2. Rebuild the :class:`pyirg.arch.ResNetSpec` from it: the prefix from the stem
   convolution's name, depth and numbering from the ``Eltwise`` numbers, width from the
   stem's channels, classes from ``InnerProduct1``; ``--depth`` / ``--width`` must agree if
   given. Then regenerate the deploy net from that spec and compare them layer by layer
   (names, types, bottoms, tops and the parameters that change the computation), so a
   prototxt that only looks like a CIFAR ResNet is not silently exported as a different net.
3. Convert the weights with :mod:`pyirg.torch.caffemodel` (missing layer, wrong type or
   shape: error), before pycaffe sees them (a Caffe ``CHECK`` would abort the process).
4. Export ``data`` -> (``logits``, ``prob``) with dynamic batch and image size (the net
   pools globally), opset >= 17, through the TorchScript exporter (``dynamo=False``: the
   default exporter of torch >= 2.9 needs ``onnxscript``, which the project does not
   depend on), and run ``onnx.checker.check_model`` on the file.
5. Run the ONNX file with onnxruntime and the Caffe net (TEST phase) on the same batch
   (``--input`` .npy, or normal random values from ``--seed``) and compare both outputs:
   the largest absolute difference, divided by max(1, the largest Caffe output), must be
   <= ``--atol`` (1e-4), else exit status 1 and the file is removed.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pyirg.caffeio import read_net, to_text
from pyirg.cli import one_line_error
from pyirg.options import ArgumentParser, number_problem

#: Layer types the exporter understands (everything a deploy_net ResNet contains).
CONVERTIBLE = tuple(
    "Input Convolution BatchNorm Scale ReLU Eltwise Pooling InnerProduct Softmax".split()
)
MIN_OPSET = 17
INPUT_NAME, OUTPUT_NAMES = "data", ("logits", "prob")


class ExportError(ValueError):
    """Bad input: reported as one line, exit status 2."""


@dataclass(frozen=True)
class Deploy:
    """What the exporter learned from a deploy prototxt."""

    net: Any  # caffe_pb2.NetParameter
    spec: Any  # pyirg.arch.ResNetSpec
    prefix: str
    input_blob: str
    input_shape: tuple[int, int, int, int]
    logits_blob: str
    prob_blob: str


# ----------------------------------------------------------------------------- prototxt


def _input_layer(net: Any) -> tuple[Any, tuple[int, ...]]:
    """The one Input layer (N x C x H x W) of a net whose every layer is convertible."""
    for layer in net.layer:
        if layer.type not in CONVERTIBLE:
            raise ExportError(
                f"layer {layer.name!r} has type {layer.type!r}, which the exporter cannot "
                f"convert (it converts {', '.join(CONVERTIBLE)})"
            )
    inputs = [layer for layer in net.layer if layer.type == "Input"]
    if len(inputs) != 1 or len(inputs[0].top) != 1 or len(inputs[0].input_param.shape) != 1:
        raise ExportError(
            f"the deploy net needs exactly one Input layer with one top and one shape, found "
            f"{[layer.name for layer in inputs]}"
        )
    data = inputs[0]
    dims = tuple(int(d) for d in data.input_param.shape[0].dim)
    if len(dims) != 4:
        raise ExportError(f"Input layer {data.name!r} has shape {dims}; expected N x C x H x W")
    return data, dims


def _stem(net: Any, data_top: str, prefix: str | None) -> tuple[Any, str]:
    """The stem convolution '<prefix>Convolution1' reading the input, and its prefix."""
    stems = [
        layer for layer in net.layer if layer.type == "Convolution" and data_top in layer.bottom
    ]
    match = re.fullmatch(r"(.*)Convolution1", stems[0].name) if len(stems) == 1 else None
    if match is None:
        names = [layer.name for layer in stems]
        raise ExportError(
            f"cannot find the stem convolution '<prefix>Convolution1' reading {data_top!r} "
            f"(convolutions reading it: {names})"
        )
    stem, found = stems[0], match.group(1)
    if prefix is not None and prefix != found:
        raise ExportError(
            f"--prefix {prefix!r} does not match the stem convolution {stem.name!r} "
            f"(prefix {found!r})"
        )
    return stem, found


def infer_spec(
    net: Any, prefix: str | None = None, depth: int | None = None, width: float | None = None
) -> Deploy:
    """Recover the ResNetSpec (and prefix, input) of a deploy net; see the module docstring."""
    from pyirg.arch import cifar_resnet

    data, dims = _input_layer(net)
    stem, prefix = _stem(net, data.top[0], prefix)
    eltwise = re.compile(re.escape(prefix) + r"Eltwise(\d+)")
    elts = sorted(int(m.group(1)) for layer in net.layer if (m := eltwise.fullmatch(layer.name)))
    if not elts or len(elts) % 3 or elts[-1] % 3:
        raise ExportError(
            f"cannot read a CIFAR ResNet from the Eltwise layers {elts} (prefix {prefix!r}): "
            "expected the same number of blocks in each of 3 stages"
        )
    n, ref_n = len(elts) // 3, elts[-1] // 3
    kept = tuple(
        tuple(e - 1 - s * ref_n for e in elts if s * ref_n < e <= (s + 1) * ref_n) for s in range(3)
    )
    found_depth, numbering = 6 * n + 2, 6 * ref_n + 2
    found_width = stem.convolution_param.num_output / 16
    fcs = [layer for layer in net.layer if layer.name == prefix + "InnerProduct1"]
    if len(fcs) != 1:
        raise ExportError(f"the deploy net has no classifier layer {prefix + 'InnerProduct1'!r}")
    for given, got, what in ((depth, found_depth, "depth"), (width, found_width, "width")):
        if given is not None and given != got:
            raise ExportError(f"--{what} {given:g} but the prototxt describes {what} {got:g}")
    classes = fcs[0].inner_product_param.num_output
    try:
        spec = cifar_resnet(found_depth, found_width, classes, dims[1], numbering, kept)
    except ValueError as err:
        raise ExportError(
            f"the deploy prototxt is not a CIFAR ResNet of pyirg.arch: {err}"
        ) from None
    softmax = [layer for layer in net.layer if layer.type == "Softmax"]
    prob = softmax[0].top[0] if len(softmax) == 1 and softmax[0].top else "prob"
    return Deploy(net, spec, prefix, data.top[0], dims, fcs[0].top[0], prob)  # type: ignore[arg-type]


def _computation(layer: Any) -> list[str]:
    """A layer as prototxt lines without what leaves its outputs unchanged: the learning
    rate and decay multipliers (``param``) and the fillers."""
    copy = type(layer)()
    copy.CopyFrom(layer)
    copy.ClearField("param")
    for field in ("convolution_param", "inner_product_param", "scale_param"):
        sub = getattr(copy, field)
        for filler in ("weight_filler", "bias_filler", "filler"):
            if filler in sub.DESCRIPTOR.fields_by_name:
                sub.ClearField(filler)
    return to_text(copy).splitlines()


def check_structure(deploy: Deploy) -> None:
    """The prototxt must be the deploy net pyirg.netspec generates for its spec: every layer
    after the input the same message, fillers and multipliers aside."""
    from pyirg.netspec import deploy_net, spec_label

    _, c, h, w = deploy.input_shape
    expected = deploy_net(deploy.spec, deploy.prefix, batch=1, channels=c, height=h, width=w)
    actual = [layer for layer in deploy.net.layer if layer.type != "Input"]
    wanted = [layer for layer in expected.layer if layer.type != "Input"]
    for want in wanted:  # the generated net's input blob is "data"; the file may name it
        want.bottom[:] = [
            deploy.input_blob if b == expected.layer[0].top[0] else b for b in want.bottom
        ]
    for index, (want, got) in enumerate(zip(wanted, actual)):
        diff = [
            f"{line[0]} {line[2:].strip()}"
            for line in difflib.ndiff(_computation(want), _computation(got))
            if line[:1] in "+-"
        ]
        if diff:
            raise ExportError(
                f"layer {got.name!r} (#{index + 1} after the input, a {got.type}): its "
                f"parameters differ from {spec_label(deploy.spec)}'s {want.type} "
                f"{want.name!r}: {'; '.join(diff)} (-: expected, +: found)"
            )
    if len(actual) != len(wanted):
        extra = actual[len(wanted) :] or wanted[len(actual) :]
        what = "extra" if len(actual) > len(wanted) else "missing"
        raise ExportError(f"{what} layer {extra[0].name!r} ({extra[0].type}) in the deploy net")


def read_deploy(
    path: str | Path,
    prefix: str | None = None,
    depth: int | None = None,
    width: float | None = None,
) -> Deploy:
    """Parse, infer the spec, and check the structure of a deploy prototxt."""
    try:
        net = read_net(path, v1=False)
    except ValueError as err:
        raise ExportError(str(err)) from None
    deploy = infer_spec(net, prefix, depth, width)
    check_structure(deploy)
    return deploy


# ----------------------------------------------------------------------------- ONNX


class _WithSoftmax(nn.Module):
    """The deploy net's two outputs: InnerProduct1 (logits) and Softmax (prob)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(x)
        return logits, torch.softmax(logits, dim=1)


def build_model(deploy: Deploy, weights: str | Path) -> nn.Module:
    """CifarResNet of the deploy spec with the caffemodel's weights, eval mode, float32."""
    from pyirg.torch.caffemodel import load_caffe_weights
    from pyirg.torch.resnet import CifarResNet

    model = CifarResNet(deploy.spec)
    try:
        load_caffe_weights(model, weights, prefix=deploy.prefix)
    except ValueError as err:
        message = str(err)
        raise ExportError(message if str(weights) in message else f"{weights}: {message}") from None
    return _WithSoftmax(model).eval()


def export_onnx(model: nn.Module, path: str | Path, example: np.ndarray, opset: int) -> None:
    """torch.onnx.export (TorchScript exporter), dynamic batch, then the ONNX checker."""
    import onnx

    if opset < MIN_OPSET:
        raise ExportError(f"--opset must be >= {MIN_OPSET}, got {opset}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            model,
            (torch.from_numpy(example),),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes={
                INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
                **{name: {0: "batch"} for name in OUTPUT_NAMES},
            },
            do_constant_folding=True,
        )
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def run_onnx(path: str | Path, x: np.ndarray) -> list[np.ndarray]:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(list(OUTPUT_NAMES), {INPUT_NAME: x})


def run_caffe(
    deploy_path: str | Path, weights: str | Path, deploy: Deploy, x: np.ndarray
) -> list[np.ndarray]:
    """The deploy net in pycaffe (TEST phase), reshaped to the batch."""
    import caffe

    net = caffe.Net(str(deploy_path), str(weights), caffe.TEST)
    net.blobs[deploy.input_blob].reshape(*x.shape)
    net.reshape()
    net.blobs[deploy.input_blob].data[...] = x
    net.forward()
    return [net.blobs[b].data.copy() for b in (deploy.logits_blob, deploy.prob_blob)]


def input_batch(deploy: Deploy, batch: int | None, path: str | None, seed: int) -> np.ndarray:
    """The comparison batch: a .npy (N x C x H x W) or normal random values."""
    _, c, h, w = deploy.input_shape
    if path is None:
        n = deploy.input_shape[0] if batch is None else batch
        if n < 1:
            raise ExportError(f"--batch must be >= 1, got {n}")
        return np.random.default_rng(seed).standard_normal((n, c, h, w)).astype(np.float32)
    try:
        x = np.load(path)
    except (OSError, ValueError) as err:
        raise ExportError(f"cannot read --input {path}: {err}") from None
    if x.ndim != 4 or x.shape[1] != c:
        raise ExportError(f"--input {path} has shape {x.shape}; expected N x {c} x H x W")
    if batch is not None and batch != x.shape[0]:
        raise ExportError(f"--batch {batch} but --input {path} holds {x.shape[0]} images")
    return np.ascontiguousarray(x, dtype=np.float32)


# ----------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    """``export-onnx``'s options."""
    p = ArgumentParser(
        prog="export_onnx.py",
        description="Export a student's deploy prototxt + caffemodel to ONNX through PyTorch, "
        "check the file and compare ONNX Runtime with Caffe on one batch.",
    )
    p.add_argument("deploy", help="deploy prototxt (pyirg.netspec.deploy_net)")
    p.add_argument("weights", help="trained .caffemodel (a distillation snapshot is fine)")
    p.add_argument("output", help="ONNX file to write")
    p.add_argument("--prefix", help="layer-name prefix, e.g. stu_ (default: from the prototxt)")
    p.add_argument("--batch", type=int, help="comparison batch size (default: the prototxt's)")
    p.add_argument("--input", help=".npy batch N x C x H x W to compare on (default: random)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random batch")
    p.add_argument("--depth", type=int, help="expected ResNet depth (checked against the prototxt)")
    p.add_argument("--width", type=float, help="expected width multiplier (checked likewise)")
    p.add_argument("--opset", type=int, default=MIN_OPSET, help=f"ONNX opset (>= {MIN_OPSET})")
    p.add_argument(
        "--atol",
        type=float,
        default=1e-4,
        help="max |ONNX - Caffe| per output, relative to max(1, max |Caffe|): float32 "
        "logits of thousands differ by a few 1e-4 absolute while agreeing to 1e-7",
    )
    return p


def run(args: argparse.Namespace) -> int:
    """The steps of the module docstring; 0 when ONNX Runtime reproduces Caffe, else 1."""
    problem = number_problem("--atol", args.atol, positive=True)
    if problem:
        raise ExportError(problem)
    deploy = read_deploy(args.deploy, args.prefix, args.depth, args.width)
    model = build_model(deploy, args.weights)
    x = input_batch(deploy, args.batch, args.input, args.seed)
    output = Path(args.output)
    if output.is_dir() or not output.parent.is_dir():
        where = "is a folder" if output.is_dir() else f"has no folder {output.parent}"
        raise ExportError(f"output {output} {where}: give the path of the .onnx file to write")
    import onnx

    try:
        export_onnx(model, args.output, x, args.opset)
    except onnx.checker.ValidationError as err:
        print(f"FAIL: onnx.checker rejects {args.output}: {err}", file=sys.stderr)
        return 1
    onnx_out = run_onnx(args.output, x)
    caffe_out = run_caffe(args.deploy, args.weights, deploy, x)
    from pyirg.netspec import spec_label

    print(
        f"{args.output}: {spec_label(deploy.spec)} (prefix {deploy.prefix!r}), opset "
        f"{args.opset}, onnx.checker OK"
    )
    source = args.input or f"random, seed {args.seed}"
    print(f"batch {'x'.join(map(str, x.shape))} ({source}); tolerance {args.atol:g}")
    print(
        f"{'output':8} {'caffe blob':20} {'max|onnx - caffe|':>18} {'max|caffe|':>11} "
        f"{'relative':>10}"
    )
    worst = 0.0
    for name, blob, a, b in zip(
        OUTPUT_NAMES, (deploy.logits_blob, deploy.prob_blob), onnx_out, caffe_out
    ):
        b = b.reshape(a.shape)
        diff = float(np.max(np.abs(a - b))) if np.all(np.isfinite(a)) else float("inf")
        scale = max(1.0, float(np.max(np.abs(b))))
        worst = max(worst, diff / scale)
        print(f"{name:8} {blob:20} {diff:18.3e} {scale:11.3e} {diff / scale:10.2e}")
    if not worst <= args.atol:
        Path(args.output).unlink(missing_ok=True)  # never leave a file that does not match
        print(
            f"FAIL: ONNX and Caffe differ by {worst:.3e} (relative) > {args.atol:g}; "
            f"{args.output} did not reproduce the Caffe net and was removed",
            file=sys.stderr,
        )
        return 1
    print("PASS")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``export-onnx``: errors in one line, exit status 2 (``pyirg --debug``: the traceback)."""
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except ValueError as err:  # ExportError, and the converters' errors naming the layer
        return one_line_error("export_onnx", err)


__all__ = [
    "CONVERTIBLE",
    "Deploy",
    "ExportError",
    "build_model",
    "check_structure",
    "export_onnx",
    "infer_spec",
    "main",
    "read_deploy",
    "run_caffe",
    "run_onnx",
]
