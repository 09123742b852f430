"""The replay's status lines, as gh-ost prints them each interval: events applied (and the rate since
the last line), the backlog (entries not yet delivered plus delivered but unacknowledged), the lag in
seconds behind the newest applied event, the ETA at the current rate, and "caught up" once the backlog
reaches zero. Silent while idle and caught up; the last line of a run that stops when caught up says so.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


@dataclass
class ReplayLines:
    every_s: float = 10.0
    clock: Callable[[], float] = time.monotonic
    _at: float = field(default=0.0, repr=False)
    _done: int = field(default=0, repr=False)
    _caught_up: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        self._at = self.clock()  # the run starts now, with nothing done

    def line(self, done: int, dead: int, backlog: int, lag_s: float, *, force: bool = False) -> str | None:
        """The line to log now, if one is due: `done` events processed so far (applied, already there, or
        `dead`-lettered). None while the interval has not passed (unless `force`: the run's last line),
        and while the replay stays caught up with nothing new. Reaching zero backlog is said at once."""
        now = self.clock()
        elapsed, moved = now - self._at, done - self._done
        reached = backlog == 0 and not self._caught_up
        if backlog == 0 and self._caught_up and moved == 0:
            self._at = now  # idle and caught up: said already; the next rate counts from here
            return None
        if not (force or reached or elapsed >= self.every_s):
            return None
        rate = moved / elapsed if elapsed > 0 else 0.0
        self._at, self._done = now, done
        took = f"{elapsed:.{0 if elapsed >= 10 else 1}f}s"
        head = f"replay: applied {done - dead} (+{moved} in {took}, {rate:,.0f} events/s)"
        head += f", dead-lettered {dead}" if dead else ""
        head += f", backlog {backlog}, lag {lag_s:.1f}s"
        self._caught_up = backlog == 0
        if backlog == 0:
            return f"{head}: caught up"
        return f"{head}, ETA {_duration(backlog / rate if rate > 0 else None)}"
