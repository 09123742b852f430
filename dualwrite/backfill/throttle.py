"""A simple token bucket: at most `rate` rows per second, with one second of burst."""

from __future__ import annotations

import time
from collections.abc import Callable

from dualwrite import metrics


class TokenBucket:
    def __init__(self, rate: float | None, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate if rate and rate > 0 else None
        self.clock = clock
        self.tokens = float(rate or 0)
        self.last = clock()

    def take(self, n: int, stop: Callable[[], bool] = lambda: False) -> None:
        """Block until n rows may proceed (a chunk larger than the burst just waits longer)."""
        if self.rate is None or n <= 0:
            return
        now = self.clock()
        self.tokens = min(self.rate, self.tokens + (now - self.last) * self.rate)
        self.last = now
        self.tokens -= n
        if self.tokens >= 0:
            return
        wait = -self.tokens / self.rate
        gauge = metrics.THROTTLE_ACTIVE.labels("rate")
        gauge.set(1)
        try:
            end = self.clock() + wait
            while not stop() and self.clock() < end:
                time.sleep(min(0.1, max(0.0, end - self.clock())))
        finally:
            gauge.set(0)
