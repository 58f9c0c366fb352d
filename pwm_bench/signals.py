"""Stop signals: how a long command turns SIGINT/SIGTERM into a clean stop."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol


class StopHandler(Protocol):
    """A signal handler with an ``abortable`` flag (False once the command is saving its outcome)."""

    abortable: bool

    def __call__(self, signum: int, frame: Any) -> None: ...


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def stop_signals_to(handler: StopHandler) -> Iterator[StopHandler]:
    """``handler`` takes SIGINT and SIGTERM for the body (main thread only; elsewhere nothing is
    installed); on exit it stops being abortable and the previous handlers come back."""
    if threading.current_thread() is not threading.main_thread():
        yield handler
        return
    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield handler
    finally:
        handler.abortable = False
        for sig, prev in previous.items():
            signal.signal(sig, prev)
