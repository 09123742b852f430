"""Every retry in dualwrite: one tenacity policy per kind of failure, all of them here.

| policy            | for                                                      | attempts / wait                      |
|-------------------|----------------------------------------------------------|--------------------------------------|
| SECONDARY_APPLY   | the write path's apply to the other side (a dropped      | 3; 10 ms, 20 ms                      |
|                   | connection, a deadlock with the replayer)                |                                      |
| transient_db()    | a batch of the backfill or its reset meeting a deadlock, | n+1; 50 ms doubling, at most 2 s     |
|                   | a serialization failure, a lock timeout, a lost link     |                                      |
| poison_event()    | one replayed event: is it poison (dead-letter it) or was | n; 20 ms, 40 ms, ...                 |
|                   | it a passing conflict? Connection errors are not retried |                                      |
|                   | here (the outage policy owns them), nor schema errors    |                                      |
| outage()          | Postgres or Redis down or restarting, under a loop that  | forever (until should_stop); 0.1 s   |
|                   | must outlive it (replay, relay)                          | doubling, at most 5 s                |
| primary_switch()  | a writer that met a retired primary waits for the switch | until SWITCH_WAIT_SECONDS; 20 ms     |
|                   | to complete (lock contention with the fence)             |                                      |
| poll_until()      | waiting for a condition (the relay's drain), a server's  | until a deadline; fixed interval     |
|                   | error counting as "not yet"                              |                                      |
| wal_switch()      | a SQLite file in rollback-journal mode switched to WAL   | until the busy timeout; 5 ms rising  |
|                   | while the application writes it (SQLite answers BUSY at  | to 50 ms                             |
|                   | once there, without its busy handler)                    |                                      |

A policy built once (SECONDARY_APPLY) is reused: a tenacity Retrying keeps its per-call state in a
thread-local, so one object serves every thread, and a call costs microseconds, not a rebuild.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable

import psycopg
import psycopg2
import redis
from sqlalchemy.exc import DBAPIError, OperationalError
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    retry_if_exception_type,
    retry_if_result,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
    wait_fixed,
    wait_incrementing,
)

from dualwrite.errors import DualwriteError, SchemaDriftError, UnknownTableError, first_line, sqlstate

__all__ = [
    "SECONDARY_APPLY",
    "TRANSIENT_SQLSTATES",
    "is_transient",
    "outage",
    "poison_event",
    "poll_until",
    "primary_switch",
    "transient_db",
    "wal_switch",
]

log = logging.getLogger("dualwrite.retry")

# serialization failure, deadlock, lock not available, statement cancelled (lock_timeout); 08xxx: connection
TRANSIENT_SQLSTATES = {"40001", "40P01", "55P03", "57014"}


def is_transient(exc: BaseException) -> bool:
    """A failure that the same statement, sent again shortly, may not meet (see TRANSIENT_SQLSTATES)."""
    state = sqlstate(exc)
    if state in TRANSIENT_SQLSTATES or (state or "").startswith("08"):
        return True
    orig = getattr(exc, "orig", exc)
    return isinstance(orig, psycopg.OperationalError | psycopg2.OperationalError) and state is None


# The write path: a plain DBAPIError (connection dropped, deadlock) is worth two quick tries more; anything
# else (schema drift, an unknown table) is not. Built once: see the module docstring.
SECONDARY_APPLY = Retrying(
    retry=retry_if_exception_type(DBAPIError),
    stop=stop_after_attempt(3),
    wait=wait_exponential(multiplier=0.01, max=0.02),
    reraise=True,
)
# The same policy after a first attempt made without tenacity (its per-call bookkeeping costs the
# write path more than the retry ever saves): the two tries that remain, 10 ms then 20 ms after.
SECONDARY_APPLY_AGAIN = Retrying(
    retry=retry_if_exception_type(DBAPIError),
    stop=stop_after_attempt(2),
    wait=wait_fixed(0.02),
    before=lambda state: time.sleep(0.01) if state.attempt_number == 1 else None,
    reraise=True,
)


def transient_db(retries: int, what: str = "batch", logger: logging.Logger = log) -> Retrying:
    """A batch (a backfill chunk, a reset batch) in one transaction: retried `retries` times on a
    transient error (is_transient), each retry logged; any other error is raised at once."""

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        logger.warning("%s: transient error, retrying: %s", what, first_line(exc, 300) if exc else "?")

    return Retrying(
        retry=retry_if_exception(is_transient),
        stop=stop_after_attempt(retries + 1),
        wait=wait_exponential(multiplier=0.05, max=2.0),
        before_sleep=before_sleep,
        reraise=True,
    )


def _retryable_event_error(exc: BaseException) -> bool:
    if isinstance(exc, OperationalError | UnknownTableError | SchemaDriftError):
        return False  # an outage (the caller's outage policy), or an event no retry can apply
    return isinstance(exc, DBAPIError | DualwriteError | ValueError | KeyError | TypeError)


def poison_event(attempts: int) -> Retrying:
    """One event applied on its own: up to `attempts` tries (20 ms, 40 ms, ... apart) before the caller
    dead-letters it; the last error is raised. Outages and schema errors are raised at once."""
    return Retrying(
        retry=retry_if_exception(_retryable_event_error),
        stop=stop_after_attempt(max(1, attempts)),
        wait=wait_incrementing(start=0.02, increment=0.02),
        reraise=True,
    )


OUTAGE_ERRORS = (OperationalError, redis.RedisError)


def outage(
    should_stop: Callable[[], bool],
    on_retry: Callable[[BaseException, float], None],
    errors: tuple[type[BaseException], ...] = OUTAGE_ERRORS,
    sleep: Callable[[float], None] | None = None,
) -> Retrying:
    """A server down or restarting under a loop that must outlive it: retry forever, 0.1 s doubling to
    5 s, `on_retry(error, seconds)` before each wait; the wait ends early (and the last error is raised)
    once should_stop() says so. `sleep`: the caller's own wait (the relay's ends at the next commit)."""

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        on_retry(exc or RuntimeError("?"), state.upcoming_sleep)

    def interruptible(seconds: float) -> None:
        _interruptible_sleep(seconds, should_stop)

    def stop(state: RetryCallState) -> bool:
        return should_stop()

    return Retrying(
        retry=retry_if_exception_type(errors),
        stop=stop,
        wait=wait_exponential(multiplier=0.1, max=5.0),
        before_sleep=before_sleep,
        sleep=sleep or interruptible,
        reraise=True,
    )


def primary_switch(seconds: float) -> Retrying:
    """A writer whose transaction began on a side that is no longer the primary: try again every 20 ms
    (the caller re-reads the phase) while the switch completes, for at most `seconds`. The wrapped
    function returns None to ask for another try; after `seconds` the last None is returned."""
    return Retrying(
        retry=retry_if_result(lambda r: r is None),
        stop=stop_after_delay(seconds),
        wait=wait_fixed(0.02),
        retry_error_callback=lambda state: None,
    )


def wal_switch(seconds: float) -> Retrying:
    """`PRAGMA journal_mode=WAL` on a file in rollback-journal mode needs it exclusively; with another
    connection inside a write transaction SQLite returns "database is locked" at once (waiting could
    deadlock, so its busy handler is not called). Try again until that transaction ends, within `seconds`
    (the busy timeout a write would wait), then raise it."""
    return Retrying(
        retry=retry_if_exception(lambda e: isinstance(e, sqlite3.OperationalError) and "locked" in str(e)),
        stop=stop_after_delay(seconds),
        wait=wait_incrementing(start=0.005, increment=0.005, max=0.05),
        reraise=True,
    )


def poll_until(
    seconds: float, every: float, done: Callable[[], bool], errors: tuple[type[BaseException], ...] = ()
) -> bool:
    """Call done() every `every` seconds until it returns True (True) or `seconds` pass (False); the
    `errors` it raises count as not done yet."""
    retrying = Retrying(
        retry=retry_if_result(lambda ok: not ok) | retry_if_exception_type(errors),
        stop=stop_after_delay(seconds),
        wait=wait_fixed(every),
        retry_error_callback=lambda state: False,
    )
    return bool(retrying(done))


def _interruptible_sleep(seconds: float, should_stop: Callable[[], bool]) -> None:
    end = time.monotonic() + seconds
    while not should_stop() and time.monotonic() < end:
        time.sleep(min(0.1, max(0.0, end - time.monotonic())))
