"""Run the net checker (:mod:`pyirg.check`) before training, so a broken net fails with
a message instead of a Caffe abort (or a run that trains the wrong thing)."""

from __future__ import annotations

from typing import Any

from pyirg.check import check_net
from pyirg.train.common import DEFAULT_STUDENT_PREFIX
from pyirg.train.errors import PreflightError


def run_preflight(
    net_param: Any, source: str, *, student_prefix: str = DEFAULT_STUDENT_PREFIX
) -> list[str]:
    """Raise :class:`PreflightError` listing the checker's errors; return its warnings."""
    problems = check_net(net_param, student_prefix=student_prefix)
    errors = [str(p) for p in problems if p.is_error]
    if errors:
        raise PreflightError(f"{source}: pre-flight check failed:\n  " + "\n  ".join(errors))
    return [str(p) for p in problems if not p.is_error]
