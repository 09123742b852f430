"""Let shadow comparisons run in the request path's idle time.

A comparison costs about as much Python as the read it checks (SQLAlchemy builds and runs the candidate
query, then both results are compared), and a Python process runs one thread at a time (the GIL). A
worker that runs while a request is being served makes that request wait: when the request's thread
releases the GIL (every SQLite call does), a waiting worker takes it and keeps it until its own next I/O
or for up to the switch interval (5 ms). That wait is the shadow phase's p99 overhead.

So the request path counts the requests in flight (`enter` / `leave`, a lock each, no I/O), and a
worker calls `wait_quiet()` before each step of a comparison: it sleeps (without the GIL) until no
request is in flight, for at most `max_defer` seconds, then runs the step anyway. A saturated process
(no idle moment at all) still runs one step per `max_defer`; work it cannot keep up with fills the
reader's bounded queue and is counted as skipped, never queued without bound. That is the trade: on a
path with no idle time, coverage drops (and is counted) instead of every read getting slower.
"""

from __future__ import annotations

import threading
import time


class RequestGate:
    def __init__(self, max_defer: float = 0.1) -> None:
        self.max_defer = max_defer
        self._cond = threading.Condition(threading.Lock())
        self._turn = threading.Lock()  # one worker waits at a time: forced steps <= 1 per max_defer
        self._active = 0
        self._waiting = 0
        self._busy = False  # the last wake-up on an idle moment found the next request already running
        self.deferred_s = 0.0  # total time workers waited for a quiet moment (for profiling)
        self.wakes = 0  # times a waiting worker woke up (each costs the request path a GIL hand-over)

    def enter(self) -> None:
        with self._cond:
            self._active += 1

    def leave(self) -> None:
        with self._cond:
            self._active -= 1
            if not self._active and self._waiting:
                self._cond.notify()

    @property
    def active(self) -> int:
        return self._active

    def wait_quiet(self) -> None:
        """Block (GIL released) while a request is in flight, at most `max_defer` seconds.

        The wait asks `leave()` for a wake-up, so an idle gap is used at once. Waking costs the request
        path a GIL hand-over, so when a wake-up finds the next request already running (a saturated
        path has no gaps), the gate turns `busy`: waits then sleep to their deadline without asking,
        one wake-up per forced step, until a worker finds the path idle again."""
        if not self._active or self.max_defer <= 0:
            return
        start = time.monotonic()
        with self._turn:
            deadline = time.monotonic() + self.max_defer
            with self._cond:
                while self._active:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    if self._busy:
                        self._cond.wait(left)
                    else:
                        self._waiting += 1
                        try:
                            self._cond.wait(left)
                        finally:
                            self._waiting -= 1
                        self._busy = self._active > 0
                    self.wakes += 1
                if not self._active:
                    self._busy = False
        self.deferred_s += time.monotonic() - start
