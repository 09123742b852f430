"""The re-reads of a shadow mismatch: both sides read again after each of the reader's `recheck_delays`.

A mismatch is not settled by its first comparison: a write may be in flight (an inline apply that failed, healed
by the replay a moment later). `Rereads` holds one such mismatch between its re-reads; whoever drives it waits
`delay` and calls `step()`. A worker thread waits in place (ShadowReader._compare); the comparator process keeps
them in a `RereadSchedule`, a heap by due time served between records, so one persistent mismatch never holds up
the comparisons behind it. With the reader closing (`reader._closing`), a step is the last re-read, at once.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import time
from collections.abc import Callable
from typing import Any

from dualwrite.shadow.experiment import Experiment, Observation, Result

log = logging.getLogger("dualwrite.shadow.rereads")


class Rereads:
    """One mismatch waiting for its next re-read. `step()` reads both sides again and returns the settled
    Result (counted, and a mismatch recorded, by the reader: "ignored" if they matched), None if the re-read
    failed (counted "error"), or itself while re-reads remain (wait `delay` before the next step)."""

    def __init__(
        self, reader: Any, exp: Experiment, result: Result, backends: Any, job: tuple[Any, ...],
        pause: Callable[[], None] | None,
    ) -> None:  # fmt: skip
        self.reader, self.exp, self.result, self.backends, self.pause = reader, exp, result, backends, pause
        self.backend, self.store, self.label, self.query, self.fn, self.params, self.control_backend = job
        self._delays = list(reader.recheck_delays)
        self.delay = self._delays[0]
        self._waited, self._since = 0.0, time.monotonic()

    def step(self) -> Rereads | Result | None:
        backends, store, query, fn = self.backends, self.store, self.query, self.fn
        self._waited += time.monotonic() - self._since
        self._delays.pop(0)
        try:
            again = self.exp.evaluate(
                Observation.capture("control", lambda: backends.timed_read(self.control_backend, store, query, fn)),
                Observation.capture(
                    "candidate", lambda: self.reader.candidates.read(backends, self.backend, store, query, fn)
                ),
                self.pause,
            )
        except Exception as exc:
            log.warning("shadow %s: %r", query, exc)
            self.reader._count(backends, store, self.label, "error")
            return None
        if again.matched:
            self.result.outcome = "ignored"
            self.result.error = f"in flight: matched when read again after {round(self._waited, 3):g}s"
        elif self._delays and not self.reader._closing.is_set():
            self.delay, self._since = self._delays[0], time.monotonic()
            return self
        return self.reader._settle(backends, self.backend, store, self.label, self.params, self.result)


class RereadSchedule:
    """The comparator process' pending re-reads, by due time: `run_due` between records, `run_all` on close."""

    def __init__(self, settle: Callable[[Any, Result | None], None]) -> None:
        self._heap: list[tuple[float, int, Rereads, Any]] = []
        self._order = itertools.count()  # ties by arrival; Rereads do not compare
        self._settle = settle  # settle(tag, result) for each mismatch whose re-reads ended

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, rereads: Rereads, tag: Any) -> None:
        heapq.heappush(self._heap, (time.monotonic() + rereads.delay, next(self._order), rereads, tag))

    def wait(self) -> float | None:
        """Seconds until the next re-read is due (None: none pending)."""
        return max(0.0, self._heap[0][0] - time.monotonic()) if self._heap else None

    def run_due(self) -> None:
        while self._heap and self._heap[0][0] <= time.monotonic():
            self._step(heapq.heappop(self._heap))

    def run_all(self) -> None:
        """Every pending one, now (the reader is closing: each is read once more, at once, and settled)."""
        while self._heap:
            self._step(heapq.heappop(self._heap))

    def _step(self, entry: tuple[float, int, Rereads, Any]) -> None:
        _due, _n, rereads, tag = entry
        outcome = rereads.step()
        if isinstance(outcome, Rereads):
            self.add(outcome, tag)
        else:
            self._settle(tag, outcome)
