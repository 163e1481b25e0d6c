"""``pyirg train`` / ``tools/train.py``: the command line over :func:`train`.

Errors the user can fix become a one-line message and exit status 2, an
interrupt the conventional 128 + signal, so scripts can tell them apart.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
from pathlib import Path
from typing import Any

from pyirg.caffeio import PathLike, caffe_proto
from pyirg.cli import one_line_error
from pyirg.data.core import DataError
from pyirg.data.feed import BatchFn, array_batch_fn, pad_images, pixel_mean
from pyirg.data.writer import read_npy_split
from pyirg.options import ArgumentParser, add_options, from_args
from pyirg.train import TrainError, TrainingInterrupted
from pyirg.train.driver import TrainSettings, prepare_solver_param, train


def input_batch_shapes(net_param: Any, phase: int) -> list[tuple[str, tuple[int, ...]]]:
    """(top, shape) of the Input layers of ``net_param`` that are active in ``phase``."""
    from pyirg.check import included  # Caffe's own layer filter

    tops: list[tuple[str, tuple[int, ...]]] = []
    for layer in net_param.layer:
        if layer.type != "Input" or not included(layer, phase):
            continue
        shapes = list(layer.input_param.shape)
        for i, top in enumerate(layer.top):
            shape = shapes[i] if i < len(shapes) else shapes[0]
            tops.append((top, tuple(int(d) for d in shape.dim)))
    return tops


def npy_batch_fns(
    data_dir: PathLike,
    net_param: Any,
    *,
    seed: int,
    pad: int = 0,
    mirror: bool = False,
    scale: float = 1.0,
) -> tuple[BatchFn, BatchFn]:
    """Batch functions over a prepared directory's .npy arrays for the net's Input layers.

    The first Input top receives the images (minus the per-pixel train mean,
    of the padded images when ``pad`` > 0), the second the labels; the batch
    sizes are the Input shapes' first dimensions in each phase.
    """
    pb = caffe_proto()
    split = read_npy_split(data_dir)
    fns = []
    for phase in (pb.TRAIN, pb.TEST):
        tops = input_batch_shapes(net_param, phase)
        if len(tops) < 2:
            raise TrainError(
                f"--npy-data needs an Input layer with data and label tops in phase "
                f"{pb.Phase.Name(phase)}; found {[t for t, _ in tops]}"
            )
        (data_blob, shape), (label_blob, _) = tops[0], tops[1]
        if phase == pb.TRAIN:
            images, labels = split.train_images, split.train_labels
            per_phase = dict(
                seed=seed, pad=pad, mirror=mirror, mean=pixel_mean(pad_images(images, pad))
            )
        else:
            images, labels = split.test_images, split.test_labels
            per_phase = dict(shuffle=False, mean=pixel_mean(split.train_images))
        batch_fn = array_batch_fn(
            images,
            labels,
            shape[0],
            scale=scale,
            data_blob=data_blob,
            label_blob=label_blob,
            **per_phase,
        )
        fns.append(batch_fn)
    return fns[0], fns[1]


def build_parser() -> argparse.ArgumentParser:
    """The ``train`` options; ``prog`` is fixed so help reads the same from both entry points."""
    p = ArgumentParser(
        prog="train",
        description="Train a Caffe net or an IRG distillation net through pycaffe.",
    )
    p.add_argument("--solver", required=True, type=Path, help="solver .prototxt")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    add_options(p, TrainSettings)
    g = p.add_argument_group("Input-fed nets")
    g.add_argument(
        "--npy-data",
        type=Path,
        help="prepared directory with train/test *.npy (prepare_data digits) for Input layers",
    )
    g.add_argument("--pad", type=int, default=0, help="random crops from images padded by N")
    g.add_argument("--mirror", action="store_true", help="random horizontal flips")
    g.add_argument(
        "--scale",
        type=float,
        help="multiply mean-subtracted pixels (else the data set's, from --npy-data's "
        "info.json: 1/255 for digits, as the main job and generated nets)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """Run ``train`` from the command line; return the process exit status."""
    args = build_parser().parse_args(argv)
    if args.npy_data is None:
        given = [f for f, v in (("--pad", args.pad), ("--mirror", args.mirror)) if v]
        given += ["--scale"] if args.scale is not None else []
        if given:
            print(
                f"train: error: {', '.join(given)} apply only with --npy-data (a Data-layer "
                "net takes its augmentation from its transform_param)",
                file=sys.stderr,
            )
            return 2
    try:
        batch_fn = test_batch_fn = None
        if args.npy_data is not None:
            _, net_param, _ = prepare_solver_param(args.solver, args.net)
            scale = args.scale
            if scale is None:
                info = args.npy_data / "info.json"
                scale = json.loads(info.read_text()).get("scale", 1.0) if info.is_file() else 1.0
            elif not math.isfinite(scale):
                raise TrainError(f"--scale must be a finite number, got {scale}")
            if args.pad < 0:
                raise TrainError(f"--pad must be >= 0, got {args.pad}")
            batch_fn, test_batch_fn = npy_batch_fns(
                args.npy_data,
                net_param,
                seed=args.seed,
                pad=args.pad,
                mirror=args.mirror,
                scale=scale,
            )
        settings = from_args(TrainSettings, args, batch_fn=batch_fn, test_batch_fn=test_batch_fn)
        result = train(args.solver, args.out, settings)
    except TrainingInterrupted as e:
        print(
            f"train: {signal.Signals(e.signum).name} at iteration {e.result.iterations}: "
            f"saved {e.result.solverstate}; continue with --resume",
            file=sys.stderr,
        )
        return 128 + e.signum
    except (TrainError, DataError) as e:
        return one_line_error("train", e)
    print(json.dumps({"weights": str(result.weights), **result.metrics}, indent=2))
    return 0
