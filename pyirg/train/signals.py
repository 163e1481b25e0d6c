"""Turn SIGINT/SIGTERM into a request the training loop checks between iterations.

Stopping between solver steps lets the run save a snapshot before it ends; a
second signal still stops at once, abandoning a snapshot in progress.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class StopRequest:
    """The signal that asked the run to stop, or None while none has."""

    def __init__(self) -> None:
        self.signum: int | None = None


@contextmanager
def stop_on_signals(stop: StopRequest) -> Iterator[None]:
    """First SIGINT/SIGTERM: ask the loop to stop; second: stop now (KeyboardInterrupt)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be installed from the main thread
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if stop.signum is not None:
            raise KeyboardInterrupt
        stop.signum = signum

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
