"""The exceptions of the driver: one base class so callers can catch every setup problem."""

from __future__ import annotations

from pyirg.train.results import TrainResult


class TrainError(RuntimeError):
    """Training cannot start or continue; the message names the file or layer."""


class TeacherWeightsError(TrainError):
    """Teacher weights are missing, incomplete or of the wrong shape."""


class PreflightError(TrainError):
    """``pyirg.check.check_net`` reported errors in the net."""


class TrainingDiverged(TrainError):
    """A loss term or the update became non-finite; the last finite weights were saved."""

    def __init__(self, message: str, last_finite: str | None = None) -> None:
        super().__init__(message)
        self.last_finite = last_finite

    def __reduce__(self) -> tuple:  # keeps last_finite across processes (the main job)
        return (type(self), (str(self), self.last_finite))


class TrainingInterrupted(KeyboardInterrupt):
    """Raised after SIGINT/SIGTERM once a snapshot is saved; ``result`` describes it.

    A KeyboardInterrupt, so that a caller looping over runs stops too.
    """

    def __init__(self, result: TrainResult, signum: int) -> None:
        super().__init__(f"interrupted by signal {signum} at iteration {result.iterations}")
        self.result = result
        self.signum = signum
