"""Run the optional net checker before training, so a broken net fails with a message.

Caffe aborts the whole process on many net errors; ``pyirg.check`` finds them
first.  The checker is developed separately, so its absence is tolerated.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from pyirg.train.common import DEFAULT_STUDENT_PREFIX
from pyirg.train.errors import PreflightError


def _problem_is_warning(problem: object) -> bool:
    """Whether a checker problem may be ignored; checkers mark this in several ways."""
    if getattr(problem, "is_error", None) is False:
        return True
    level = getattr(problem, "severity", None) or getattr(problem, "level", None)
    level = getattr(level, "name", level)
    return isinstance(level, str) and level.lower() in {"warning", "warn", "info", "note"}


def run_preflight(
    net_param: Any, source: str, *, student_prefix: str = DEFAULT_STUDENT_PREFIX
) -> list[str]:
    """Run ``pyirg.check.check_net`` if that module exists; raise on errors, return warnings.

    The checker is optional (it is developed separately), so a missing module
    is not an error, but a checker that fails to import is.
    """
    try:
        check = importlib.import_module("pyirg.check")
    except ModuleNotFoundError as e:
        if e.name == "pyirg.check":
            return []
        raise
    check_net = getattr(check, "check_net", None)
    if not callable(check_net):
        return []
    # The checker needs the student prefix to tell teacher from student layers.
    accepts_prefix = "student_prefix" in inspect.signature(check_net).parameters
    kwargs = {"student_prefix": student_prefix} if accepts_prefix else {}
    problems = list(check_net(net_param, **kwargs) or [])
    errors = [str(p) for p in problems if not _problem_is_warning(p)]
    warnings = [str(p) for p in problems if _problem_is_warning(p)]
    if errors:
        raise PreflightError(f"{source}: pre-flight check failed:\n  " + "\n  ".join(errors))
    return warnings
