"""Several chunk transactions of one table in flight at once, committed strictly in key order.

A chunk's server work (COPY of its version rows and rows, index inserts, WAL) is most of the copy's cost
and runs in one Postgres backend; with `lanes` transactions open, the next chunk's COPY runs while the
previous one finishes, on another backend (another core). What must not change is the checkpoint: it is
saved in the chunk's own transaction and says "every chunk up to here is in", so chunk i saves it and
commits only after chunk i-1 committed (`Turns`). A crash at any moment leaves a committed prefix.

Waiting for the turn inside an open transaction can hide a deadlock from Postgres: chunk i+1 holds its
keys and waits (here) for chunk i, chunk i waits (there) for a live transaction, which waits for a key
of chunk i+1. So the wait has a timeout; on expiry chunk i+1 rolls back (freeing its keys) and runs
again, this time waiting for its turn before it opens its transaction.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from sqlalchemy import Table

from dualwrite.apply.rule import ApplyResult
from dualwrite.backfill import checkpoint as ckpt
from dualwrite.backfill.cursor import Chunk, encode_key
from dualwrite.backfill.steps import ChunkSteps

log = logging.getLogger("dualwrite.backfill.lanes")
TURN_TIMEOUT_S = 10.0


class Aborted(Exception):
    """An earlier chunk failed: this one rolls back too (its checkpoint would skip the failed one)."""


class TurnTimeout(Exception):
    """The previous chunk did not commit in time; roll back and retry (see the module docstring)."""


class Turns:
    """Chunk i may save the checkpoint and commit once chunk i-1 has committed."""

    def __init__(self) -> None:
        self._next = 0
        self._failed = False
        self._cond = threading.Condition()

    def wait(self, i: int, timeout: float | None) -> None:
        with self._cond:
            ok = self._cond.wait_for(lambda: self._failed or self._next == i, timeout)
            if self._failed:
                raise Aborted(f"chunk {i}: an earlier chunk failed")
            if not ok:
                raise TurnTimeout(f"chunk {i}: chunk {i - 1} did not commit within {timeout} s")

    def done(self, i: int) -> None:
        with self._cond:
            self._next = i + 1
            self._cond.notify_all()

    def fail(self) -> None:
        with self._cond:
            self._failed = True
            self._cond.notify_all()


# result, rows Postgres refused, rows prepare_chunk set aside, seconds the chunk took in its lane
Outcome = tuple[ApplyResult, int, int, float]


def _apply(steps: ChunkSteps, table: Table, cp: ckpt.Checkpoint, turns: Turns, i: int, chunk: Chunk) -> Outcome:
    """One chunk in a lane: prepare, load, wait for the turn, then checkpoint and commit."""
    started = time.perf_counter()
    status = "done" if len(chunk.values) < steps.chunk_size() else "copying"
    last_key = encode_key(chunk.last_key) if chunk.values and chunk.last_key is not None else None
    ready, set_aside = steps.prepare(table, chunk)
    eager = True

    def my_turn() -> None:
        turns.wait(i, TURN_TIMEOUT_S if eager else None)
        # Fields of this chunk's checkpoint, set on the shared one now that every earlier chunk is in.
        cp.status, cp.version = status, chunk.version
        cp.last_key = last_key or cp.last_key

    try:
        while True:
            if not eager:
                turns.wait(i, None)  # after a timeout: no keys held while waiting
            try:
                result, bad = steps.apply(table, ready, cp, set_aside, before_save=my_turn)
            except TurnTimeout as exc:
                log.warning("backfill %s: %s; rolled back, retrying in order", table.name, exc)
                eager = False
                continue
            turns.done(i)
            return result, bad, set_aside, time.perf_counter() - started
    except BaseException:
        turns.fail()
        raise


def run(
    steps: ChunkSteps,
    table: Table,
    cp: ckpt.Checkpoint,
    chunks: Iterator[Chunk],
    lanes: int,
    max_chunks: int | None,
    on_done: Callable[[Chunk, Outcome], None],
) -> None:
    """Apply chunks `lanes` at a time until the table is done, should_stop() or max_chunks; `on_done`
    is called for each committed chunk, in order. The first failure is raised once in-flight chunks end."""
    turns = Turns()
    inflight: deque[tuple[Chunk, Future[Outcome]]] = deque()
    submitted = 0
    with ThreadPoolExecutor(max_workers=lanes, thread_name_prefix=f"backfill-{table.name}") as pool:
        try:
            while not steps.should_stop() and (max_chunks is None or submitted < max_chunks):
                while len(inflight) >= lanes:
                    done, fut = inflight.popleft()
                    on_done(done, fut.result())
                chunk = next(chunks)
                inflight.append((chunk, pool.submit(_apply, steps, table, cp, turns, submitted, chunk)))
                submitted += 1
                if len(chunk.values) < steps.chunk_size():
                    break
                steps.pace(len(chunk.values))
            while inflight:
                done, fut = inflight.popleft()
                on_done(done, fut.result())
        except BaseException:
            turns.fail()  # chunks still open roll back; the checkpoint stays at the last committed one
            for _chunk, fut in inflight:
                _quiet(fut)
            raise


def _quiet(fut: Future[Any]) -> None:
    try:
        fut.result()
    except BaseException:  # noqa: BLE001, S110 - the first failure is the one raised
        pass
