"""Solver prototxts (caffe_pb2.SolverParameter) for the generated nets.

The authors released no solver. We use the standard CIFAR ResNet schedule of He et al.
(CVPR 2016, section 4.2), which the paper's ResNet-20 teacher follows:

- SGD, momentum 0.9, weight decay 0.0001 (He et al.'s value; 5e-4 is common elsewhere but
  not theirs);
- base_lr 0.1, divided by 10 at iterations 32k and 48k, stopping at 64k
  (``lr_policy: "multistep"``, ``gamma: 0.1``).

The batch size is the net's, as the authors' files have it (128 for the teacher alone,
64 for the distillation nets): the iteration counts are He et al.'s, so at batch 64 the
schedule covers half as many epochs (about 82 on CIFAR's 50k images). ``test_iter``
covers the test set once at the net's TEST batch size.

The 1000-image digits set gets the same shape scaled down 100x (640 iterations, steps at
320 and 480: about 41 epochs at batch 64, the length of the pilot runs).

``solver_mode`` is left unset, so the ``caffe`` tool runs on the CPU unless given
``--gpu`` (our CPU_ONLY build aborts on a solver that asks for the GPU).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from caffe.proto import caffe_pb2


@dataclass(frozen=True)
class Schedule:
    """Learning-rate schedule and optimizer settings."""

    base_lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    stepvalues: tuple[int, ...] = (32000, 48000)
    gamma: float = 0.1
    max_iter: int = 64000
    #: Caffe's solver type: "SGD", or "Nesterov" (the REFILLED authors' choice).
    type: str = "SGD"

    def __post_init__(self) -> None:
        steps = list(self.stepvalues)
        if steps != sorted(steps) or any(s <= 0 or s >= self.max_iter for s in steps):
            raise ValueError(
                f"stepvalues {self.stepvalues} must increase and lie in (0, max_iter "
                f"{self.max_iter})"
            )
        if self.base_lr <= 0 or self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise ValueError(
                f"need base_lr > 0, weight_decay >= 0, 0 <= momentum < 1; got {self.base_lr}, "
                f"{self.weight_decay}, {self.momentum}"
            )


def cosine_schedule(
    base_lr: float, max_iter: int, floor: float = 0.1, levels: int = 16, **settings: float
) -> Schedule:
    """The closest schedule Caffe runs to a cosine decay from ``base_lr`` to
    ``floor * base_lr`` over ``max_iter`` iterations (the REFILLED authors' stage 1).

    Caffe has no cosine policy. ``multistep`` with a constant gamma gives ``levels``
    geometric steps from ``base_lr`` down to ``floor * base_lr``; each is taken where the
    cosine crosses the geometric mean of the level before and after it, so the rate
    stays within a factor ``floor ** (1 / (2 levels))`` of the cosine's everywhere (7%
    for 16 levels of a 10x decay).
    """
    if not 0 < floor < 1 or levels < 1 or max_iter <= levels:
        raise ValueError(
            f"need 0 < floor < 1, levels >= 1 and max_iter > levels; got {floor}, {levels}, "
            f"{max_iter}"
        )
    gamma = floor ** (1 / levels)
    steps = []
    for k in range(1, levels + 1):
        target = base_lr * gamma ** (k - 0.5)  # geometric mean of levels k - 1 and k
        # cosine: base * (floor + (1 - floor) (1 + cos(pi t / T)) / 2) = target, solved for t
        c = (2 * (target / base_lr - floor) / (1 - floor)) - 1
        t = max_iter * math.acos(max(-1.0, min(1.0, c))) / math.pi
        steps.append(min(max_iter - 1, max(1, round(t))))
    steps = sorted(set(steps))
    return Schedule(
        base_lr=base_lr, gamma=gamma, stepvalues=tuple(steps), max_iter=max_iter, **settings
    )


HE2016 = Schedule()
DIGITS = Schedule(stepvalues=(320, 480), max_iter=640)
SCHEDULES = {"cifar10": HE2016, "cifar100": HE2016, "digits": DIGITS}


def make_solver(
    net: str | caffe_pb2.NetParameter,
    schedule: Schedule = HE2016,
    snapshot_prefix: str = "snapshots/net",
    test_iter: int | None = None,
    test_interval: int = 1000,
    display: int = 100,
    snapshot: int = 10000,
    random_seed: int | None = None,
) -> caffe_pb2.SolverParameter:
    """A SolverParameter for ``net``: a path (``net:``) or an inline NetParameter.

    ``test_iter`` None: no test pass (nets fed from Python, or tests).
    """
    sp = caffe_pb2.SolverParameter()
    if isinstance(net, str):
        sp.net = net
    else:
        sp.net_param.CopyFrom(net)
    if test_iter is not None:
        if test_iter < 1:
            raise ValueError(f"test_iter must be >= 1, got {test_iter}")
        sp.test_iter.append(test_iter)
        sp.test_interval = min(test_interval, schedule.max_iter)
    sp.base_lr = schedule.base_lr
    sp.lr_policy = "multistep"
    sp.gamma = schedule.gamma
    sp.stepvalue.extend(schedule.stepvalues)
    sp.max_iter = schedule.max_iter
    sp.momentum = schedule.momentum
    sp.weight_decay = schedule.weight_decay
    sp.display = display
    sp.snapshot = min(snapshot, schedule.max_iter)
    sp.snapshot_prefix = snapshot_prefix
    sp.type = schedule.type
    if random_seed is not None:
        sp.random_seed = random_seed
    return sp
