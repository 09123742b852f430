"""Raw connections of one engine kept checked out between uses: the inline apply takes one per write, and
the pool's checkout and checkin (events, the reset-on-return rollback, the queue's condition, the weakref
finalizer) cost about a tenth of a dual write's Python, profiled; a list's pop and append cost nothing.

Kept connections stay checked out of the engine's pool, so the pool's bounds hold as before (a taker that
finds none idle checks one out, waiting as the pool makes it wait), and at most `keep` are kept idle (the
rest go back to the pool, which closes its overflow). Only for connections that are idle between uses:
autocommit, no transaction left open (the inline apply's own BEGIN always ends in COMMIT or ROLLBACK).
An invalidated connection (lost) is never kept, and none is taken across a fork (the parent's sessions
are left alone) or from a disposed pool."""

from __future__ import annotations

import os
from typing import Any

from sqlalchemy import Engine


class KeptConnections:
    def __init__(self, engine: Engine, keep: int) -> None:
        self.engine, self.keep = engine, keep
        self._idle: list[Any] = []  # pop/append: atomic under the GIL, no lock needed
        self._pool = engine.pool
        self._pid = os.getpid()
        self._inherited: list[Any] = []  # a forked child's copy of the parent's: never used, never closed
        self.closed = False

    def take(self) -> Any:
        """An idle kept connection, else one from the engine's pool."""
        if self._pid != os.getpid() or self._pool is not self.engine.pool:
            self._reset()
        try:
            return self._idle.pop()
        except IndexError:
            return self.engine.raw_connection()

    def give(self, raw: Any) -> None:
        """Back after use: kept if still valid and there is room, else returned to the pool."""
        if raw.is_valid and not self.closed and len(self._idle) < self.keep and self._pool is self.engine.pool:
            self._idle.append(raw)
        else:
            raw.close()

    def _reset(self) -> None:
        idle, self._idle = self._idle, []
        if self._pid != os.getpid():
            self._inherited += idle  # closing would end the parent's sessions (they share the sockets)
            self._pid = os.getpid()
        else:
            for raw in idle:  # the pool was disposed: these go back to the old one
                raw.close()
        self._pool = self.engine.pool

    def close(self) -> None:
        """Return every idle connection to the pool (before the engine is disposed)."""
        self.closed = True
        while self._idle:
            self._idle.pop().close()
