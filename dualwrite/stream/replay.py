"""Replay of the change stream into Postgres through a Redis consumer group (at-least-once, idempotent apply).

- XGROUP CREATE ... MKSTREAM at id 0; XREADGROUP batches; a consumer first re-reads its own pending entries.
- Undecodable entries go to the dead-letter stream at once and are XACKed.
- A batch is applied with `apply_events` in one Postgres transaction; one XACK for the batch after the commit.
- If the batch fails, its events are applied one by one; an event failing `max_failures` times is
  dead-lettered (and XACKed). Connection-level failures never dead-letter: the entries stay pending.
- Pending entries idle longer than `claim_idle_ms` (a dead consumer's) are taken over with XAUTOCLAIM.
- A group lost with the stream (Redis restarted; the relay republishes from the outbox) is recreated at
  id 0, so everything still or again in the stream is read; the apply rule makes the re-reads no-ops.
- `run()` never dies of a Redis or Postgres outage: one log line, back off, go on.
- In `run()`, after a full batch the next one is read and decoded (non-blocking XREADGROUP, a helper
  thread) while this one is applied: the Redis round trip and the decoding overlap the Postgres one (the
  driver lets go of the GIL while it waits). A batch read ahead is pending for this consumer like any
  other; after an outage it is dropped and re-read with the own pending entries.
  A committed batch's XACK is then not sent on its own: it rides in the next read's pipeline (XACK first,
  one round trip, in the helper thread), or is sent at the end of a step that reads nothing ahead. Only
  committed ids are ever acked; an ack lost with an outage or a crash re-delivers entries the apply rule
  makes no-ops.
- While run() loops, the garbage collector's first threshold holds two batches (gc_batches.py).
- Every `trim_every_s` the stream is trimmed to what every group acknowledged, less the settings'
  `stream_retention` (retention.py; the relay does the same: either alone keeps the stream bounded).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import redis
from sqlalchemy.exc import DBAPIError, OperationalError

from dualwrite import metrics
from dualwrite.errors import DualwriteError, SchemaDriftError, UnknownTableError, first_line
from dualwrite.events import ChangeEvent
from dualwrite.redis_keys import stream_key
from dualwrite.retry import OUTAGE_ERRORS, outage, poison_event
from dualwrite.stream.deadletters import dead_letter, list_dead_letters, redrive
from dualwrite.stream.gc_batches import batch_gc
from dualwrite.stream.protocol import EVENT_FIELD, group_lag, is_nogroup, parse_autoclaim
from dualwrite.stream.replay_lines import ReplayLines
from dualwrite.stream.retention import StreamTrimmer

if TYPE_CHECKING:
    from dualwrite.engines import Backends
    from dualwrite.tables import Tables

__all__ = ["DEFAULT_GROUP", "ReplayStats", "Replayer", "dead_letter", "list_dead_letters", "redrive"]

log = logging.getLogger("dualwrite.stream.replay")
DEFAULT_GROUP = "backfill"
Entries = list[tuple[bytes, dict[bytes, bytes]]]
Decoded = list[tuple[bytes, Any, ChangeEvent | DualwriteError]]  # (id, payload, its event or why it has none)
_EVENT_FIELD_STR = EVENT_FIELD.decode()


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


def _decode(entries: Entries) -> Decoded:
    out: Decoded = []
    for eid, fields in entries:
        payload = fields.get(EVENT_FIELD)
        if payload is None:
            payload = fields.get(_EVENT_FIELD_STR)  # type: ignore[call-overload]  # decode_responses clients
        try:
            if payload is None:
                raise DualwriteError("entry has no event field")
            out.append((eid, payload, ChangeEvent.from_json(payload)))
        except DualwriteError as exc:
            out.append((eid, payload or b"", exc))
    return out


@dataclass
class ReplayStats:
    applied: int = 0
    stale: int = 0
    dead: int = 0
    batches: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class Replayer:
    backends: Backends
    tables: Tables
    group: str = DEFAULT_GROUP
    consumer: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    batch: int = 500
    block_ms: int = 500
    max_failures: int = 3
    claim_idle_ms: int = 30_000
    target: str = "postgres"
    lag_every_s: float = 0.5  # while busy, the lag gauges are refreshed at most this often (a round trip each)
    trim_every_s: float = 1.0
    report_every_s: float | None = None  # run() logs a status line this often (replay_lines); None: never
    stats: ReplayStats = field(default_factory=ReplayStats)

    def __post_init__(self) -> None:
        self.client: redis.Redis = self.backends.redis
        self.namespace = self.backends.settings.namespace
        self.key = stream_key(self.namespace)
        self._own_pending_done = False
        self._last_claim = 0.0
        self._last_ts: datetime | None = None
        self._lag_at = float("-inf")
        self.lag: tuple[int, int] | None = None  # (undelivered, pending) at the last update_lag()
        self.trimmer = StreamTrimmer(self.client, self.key, self.backends.settings.stream_retention)
        self._trim_at = float("-inf")
        self.lag_seconds = 0.0  # behind the newest applied event's commit time, at the last update_lag()
        self._reader: ThreadPoolExecutor | None = None  # run() only: reads the next batch ahead
        self._ahead: Future[Decoded] | None = None
        self._acks: list[bytes] = []  # run() only: committed ids whose XACK waits for the next read

    def ensure_group(self) -> None:
        try:
            self.client.xgroup_create(self.key, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    # -- one step --------------------------------------------------------------------------------
    def step(self, block_ms: int | None = None) -> int:
        """Process one batch (own pending first, then stale claims, then new entries); return its size."""
        try:
            entries = self._next_entries(self.block_ms if block_ms is None else block_ms)
        except redis.ResponseError as exc:
            if not is_nogroup(exc):
                raise
            # The stream and its group are gone (Redis restarted). Start again at 0: the relay
            # republishes the outbox into the new stream and this group reads all of it.
            log.warning("replay: group %s is gone (%s); recreating it at id 0", self.group, first_line(exc))
            self.ensure_group()
            self._own_pending_done = False
            self.lag = None  # unknown until the next look: run(once=True) must not stop on an old (0, 0)
            return 0
        if entries:
            if self._reader is not None and len(entries) >= self.batch and self._own_pending_done:
                acks, self._acks = self._acks, []  # the previous batch's, committed: acked by the read
                self._ahead = self._reader.submit(self._read_ahead, acks)  # more is likely waiting
            self._process(entries)
        if self._acks and self._ahead is None:  # no read ahead to carry them
            self.client.xack(self.key, self.group, *self._acks)
            self._acks = []  # kept if Redis failed: acked after the outage
        if not entries or time.monotonic() - self._lag_at >= self.lag_every_s:
            self.update_lag()
        if time.monotonic() - self._trim_at >= self.trim_every_s:
            self._trim_at = time.monotonic()
            self.trimmer.trim()
        return len(entries)

    def _read_ahead(self, acks: list[bytes]) -> Decoded:
        return _decode(self._read(">", 0, acks))

    def _next_entries(self, block_ms: int) -> Decoded:
        if self._ahead is not None:
            ahead, self._ahead = self._ahead, None
            got = ahead.result()  # a Redis error here is the step's, as if read now
            if got:
                return got
        entries: Entries = []
        if not self._own_pending_done:
            entries = self._read("0", 0)
            if not entries:
                self._own_pending_done = True
        if not entries and time.monotonic() - self._last_claim > max(1.0, self.claim_idle_ms / 2000):
            self._last_claim = time.monotonic()
            entries = self.claim_stale()
        if not entries:
            entries = self._read(">", block_ms)
        return _decode(entries)

    def _read(self, start: str, block_ms: int, acks: list[bytes] | None = None) -> Entries:
        streams, count, block = {self.key: start}, self.batch, block_ms or None
        if acks:  # XACK, then XREADGROUP: one round trip
            pipe = self.client.pipeline(transaction=False)
            pipe.xack(self.key, self.group, *acks)
            pipe.xreadgroup(self.group, self.consumer, streams, count=count, block=block)
            # unannotated errors (is_nogroup reads the message's start); the ack's first: it ran first
            acked, reply = pipe.execute(raise_on_error=False)
            for res in (acked, reply):
                if isinstance(res, Exception):
                    raise res
        else:
            reply = self.client.xreadgroup(self.group, self.consumer, streams, count=count, block=block)
        out: Entries = []
        gone: list[bytes] = []
        for _stream, items in reply or []:
            for eid, fields in items:
                if fields:
                    out.append((eid, fields))
                else:  # deleted while pending
                    gone.append(eid)
        if gone:
            self.client.xack(self.key, self.group, *gone)
        return out

    def claim_stale(self) -> Entries:
        reply = self.client.xautoclaim(
            self.key, self.group, self.consumer, min_idle_time=self.claim_idle_ms, start_id="0-0", count=self.batch
        )
        _next, entries, deleted = parse_autoclaim(reply)
        if deleted:
            self.client.xack(self.key, self.group, *deleted)
        return entries

    def process(self, entries: Entries) -> None:
        self._process(_decode(entries))

    def _process(self, entries: Decoded) -> None:
        good: list[tuple[bytes, bytes, ChangeEvent]] = []
        for eid, payload, ev in entries:
            if isinstance(ev, ChangeEvent):
                good.append((eid, payload, ev))
            else:
                self._dead(eid, payload, str(ev), "decode")
        if not good:
            return
        self.stats.batches += 1
        try:
            self._apply([ev for _, _, ev in good])
            ids = [eid for eid, _, _ in good]
            if self._reader is not None:
                self._acks += ids  # committed: step() has them acked (with the next read, or at its end)
            else:
                self.client.xack(self.key, self.group, *ids)
            self._last_ts = good[-1][2].ts
            return
        except OperationalError:
            raise  # Postgres unreachable: leave pending, the caller backs off
        except (DBAPIError, DualwriteError, ValueError, KeyError, TypeError) as exc:
            log.warning("replay batch of %d failed, applying one by one: %s", len(good), first_line(exc))
        for eid, payload, ev in good:
            self._apply_one(eid, payload, ev)

    def _apply(self, events: list[ChangeEvent]) -> None:
        from dualwrite.apply.rule import apply_events, plan_events, run_plan_direct

        # Each event goes to the side opposite the primary that committed it (ev.origin); events
        # without an origin go to self.target. After a primary switch both kinds can be in flight.
        by_target: dict[str, list[ChangeEvent]] = {}
        for ev in events:
            by_target.setdefault(ev.target if ev.origin else self.target, []).append(ev)
        for target, evs in by_target.items():
            if target == "postgres":
                # the inline apply's path: autocommit, no pool pre-ping (a round trip per batch, 8 % of a
                # worker), BEGIN/COMMIT riding on the batch's first and last statements. A broken pooled
                # connection fails the batch with OperationalError; it stays pending and run() retries it
                # on a fresh connection.
                direct = self.backends.postgres_direct
                result = run_plan_direct(direct, plan_events(direct, self.tables.table, evs))
            else:
                with self.backends.sqlite_apply.begin() as conn:
                    result = apply_events(conn, self.tables.table, evs)
            self._count(result)

    def _count(self, result: Any) -> None:
        self.stats.applied += result.applied
        self.stats.stale += result.stale
        metrics.REPLAY_APPLIED.labels("applied").inc(result.applied)
        metrics.REPLAY_APPLIED.labels("stale").inc(result.stale)

    def _apply_one(self, eid: bytes, payload: bytes, ev: ChangeEvent) -> None:
        def apply() -> None:
            self._apply([ev])
            self.client.xack(self.key, self.group, eid)
            self._last_ts = ev.ts

        try:
            # a passing conflict is retried; an outage is raised (run() waits it out, nothing dead-lettered)
            return poison_event(self.max_failures)(apply)
        except OperationalError:
            raise
        except (DBAPIError, DualwriteError, ValueError, KeyError, TypeError) as exc:
            reason = (
                "unknown_table"
                if isinstance(exc, UnknownTableError)
                else "schema"
                if isinstance(exc, SchemaDriftError)
                else "apply"
            )
            line = first_line(exc)
        self._dead(eid, payload, line, reason)
        log.warning("replay: event %s dead-lettered (%s): %s", _s(eid), reason, line)

    def _dead(self, eid: bytes, payload: Any, error: str, reason: str) -> None:
        dead_letter(self.client, self.namespace, eid, payload, error, reason)
        self.client.xack(self.key, self.group, eid)
        self.stats.dead += 1
        metrics.REPLAY_APPLIED.labels("dead").inc()

    # -- lag -------------------------------------------------------------------------------------
    def update_lag(self) -> tuple[int, int]:
        """Refresh the lag gauges; return (entries not yet delivered to the group, delivered but unacked)."""
        lag, pending = self.lag = group_lag(self.client, self.key, self.group)
        self._lag_at = time.monotonic()
        metrics.REPLAY_LAG_EVENTS.set(lag + pending)
        metrics.REPLAY_PENDING.set(pending)
        if lag + pending == 0 or self._last_ts is None:
            self.lag_seconds = 0.0
        else:
            self.lag_seconds = max(0.0, (datetime.now(UTC) - self._last_ts).total_seconds())
        metrics.REPLAY_LAG_SECONDS.set(self.lag_seconds)
        return lag, pending

    def caught_up(self) -> bool:
        lag, pending = self.update_lag()
        return lag == 0 and pending == 0

    def run(self, *, once: bool = False, should_stop: Callable[[], bool] = lambda: False) -> ReplayStats:
        """Loop until should_stop(); with once=True stop when the group has nothing left."""
        group_ready = False

        def on_outage(exc: BaseException, wait: float) -> None:
            # Postgres or Redis down, restarting or refusing: keep what is pending and retry.
            log.warning("replay: %s, retrying in %.1fs: %s", type(exc).__name__, wait, first_line(exc))
            self._drop_ahead()  # committed ids not yet acked stay in self._acks: acked after the outage
            self._own_pending_done = False  # re-read what this consumer holds (a batch read ahead too)

        def one_step() -> int:
            nonlocal group_ready
            if should_stop():  # stopped while an outage was waited out: no step more
                return 0
            if not group_ready:
                self.ensure_group()
                group_ready = True
            return self.step()

        through_outages = outage(should_stop, on_outage)
        lines = None if self.report_every_s is None else ReplayLines(self.report_every_s)
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="replay-read-ahead")
        try:
            with batch_gc(self.batch):  # a batch's objects are many and acyclic (gc_batches.py)
                while not should_stop():
                    try:
                        n = through_outages(one_step)
                    except OUTAGE_ERRORS:
                        break  # should_stop() while waiting out an outage
                    if once and n == 0 and self.lag == (0, 0):  # step() refreshed the lag when it found nothing
                        self._status_line(lines, force=True)
                        break
                    self._status_line(lines)
        finally:
            self._drop_ahead()  # what it read stays pending for this consumer: re-read at the next start
            self._reader.shutdown(wait=True)
            self._reader = None
            self._flush_acks()
        return self.stats

    def _flush_acks(self) -> None:
        """Ack what committed and still waits for a read (run() is ending); if Redis is down they stay
        pending and are re-delivered (no-ops)."""
        acks, self._acks = self._acks, []
        if acks:
            try:
                self.client.xack(self.key, self.group, *acks)
            except redis.RedisError as exc:
                log.warning("replay: %d committed entries not acknowledged: %s", len(acks), first_line(exc))

    def _drop_ahead(self) -> None:
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            try:
                ahead.result()
            except Exception:  # noqa: BLE001 - an outage's error: the entries are re-read from pending
                pass

    def _status_line(self, lines: ReplayLines | None, force: bool = False) -> None:
        if lines is None or self.lag is None:
            return
        done = self.stats.applied + self.stats.stale + self.stats.dead
        text = lines.line(done, self.stats.dead, sum(self.lag), self.lag_seconds, force=force)
        if text:
            log.info("%s", text)
