"""SIGTERM/SIGINT for the long commands (backfill run, migrate): the first finishes the current chunk or
batch and stops cleanly (exit 0, or --resume later); a second exits 130 at once."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any


class StopFlag:
    """Call it to ask whether a stop was signalled. `say(signum)` tells the operator what happens next."""

    def __init__(self, say: Callable[[int], None]) -> None:
        self.event = threading.Event()
        self._say = say
        self._previous: dict[int, Any] = {}

    def install(self) -> StopFlag:
        if threading.current_thread() is not threading.main_thread():  # signals reach only the main thread
            return self
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: object) -> None:
        if self.event.is_set():  # a second signal: stop now
            raise SystemExit(130)
        self._say(signum)
        self.event.set()

    def restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def __call__(self) -> bool:
        return self.event.is_set()
