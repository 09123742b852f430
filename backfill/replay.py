"""Replay of the change stream into Postgres through a Redis consumer group (at-least-once, idempotent apply).

- XGROUP CREATE ... MKSTREAM at id 0; XREADGROUP batches; a consumer first re-reads its own pending entries.
- Undecodable entries go to the dead-letter stream at once and are XACKed.
- A batch is applied with `apply_events` in one Postgres transaction; XACK only after the commit.
- If the batch fails, its events are applied one by one; an event failing `max_failures` times is
  dead-lettered (and XACKed). Connection-level failures never dead-letter: the entries stay pending.
- Pending entries idle longer than `claim_idle_ms` (a dead consumer's) are taken over with XAUTOCLAIM.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import redis
from sqlalchemy.exc import DBAPIError, OperationalError

from dualwrite import metrics
from dualwrite.errors import DualwriteError, UnknownTableError
from dualwrite.events import ChangeEvent
from dualwrite.stream import EVENT_FIELD, dead_letter_key, parse_autoclaim, stream_key

if TYPE_CHECKING:
    from dualwrite.adapter import DualWriter

log = logging.getLogger("backfill.replay")
DEFAULT_GROUP = "backfill"


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


def _line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    return (str(orig).strip().splitlines() or [type(orig).__name__])[0][:500]


def dead_letter(client: redis.Redis, namespace: str, eid: bytes | str, payload: bytes | str, error: str, reason: str):
    client.xadd(
        dead_letter_key(namespace),
        {"id": eid, "payload": payload if payload is not None else b"", "error": error[:2000], "reason": reason},
    )
    metrics.DEAD_LETTERS.labels(reason).inc()


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
    dw: DualWriter
    group: str = DEFAULT_GROUP
    consumer: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    batch: int = 500
    block_ms: int = 500
    max_failures: int = 3
    claim_idle_ms: int = 30_000
    target: str = "postgres"
    stats: ReplayStats = field(default_factory=ReplayStats)

    def __post_init__(self) -> None:
        self.client: redis.Redis = self.dw.redis
        self.namespace = self.dw.settings.namespace
        self.key = stream_key(self.namespace)
        self._own_pending_done = False
        self._last_claim = 0.0
        self._last_ts: datetime | None = None

    def ensure_group(self) -> None:
        try:
            self.client.xgroup_create(self.key, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    # -- one step --------------------------------------------------------------------------------
    def step(self, block_ms: int | None = None) -> int:
        """Process one batch (own pending first, then stale claims, then new entries); return its size."""
        entries: list[tuple[bytes, dict[bytes, bytes]]] = []
        if not self._own_pending_done:
            entries = self._read("0", 0)
            if not entries:
                self._own_pending_done = True
        if not entries and time.monotonic() - self._last_claim > max(1.0, self.claim_idle_ms / 2000):
            self._last_claim = time.monotonic()
            entries = self.claim_stale()
        if not entries:
            entries = self._read(">", self.block_ms if block_ms is None else block_ms)
        if entries:
            self.process(entries)
        self.update_lag()
        return len(entries)

    def _read(self, start: str, block_ms: int) -> list[tuple[bytes, dict[bytes, bytes]]]:
        reply = self.client.xreadgroup(
            self.group, self.consumer, {self.key: start}, count=self.batch, block=block_ms or None
        )
        out: list[tuple[bytes, dict[bytes, bytes]]] = []
        for _stream, items in reply or []:
            for eid, fields in items:
                if fields is None or not fields:  # deleted while pending
                    self.client.xack(self.key, self.group, eid)
                    continue
                out.append((eid, fields))
        return out

    def claim_stale(self) -> list[tuple[bytes, dict[bytes, bytes]]]:
        reply = self.client.xautoclaim(
            self.key, self.group, self.consumer, min_idle_time=self.claim_idle_ms, start_id="0-0", count=self.batch
        )
        _next, entries, deleted = parse_autoclaim(reply)
        if deleted:
            self.client.xack(self.key, self.group, *deleted)
        return entries

    def process(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        good: list[tuple[bytes, bytes, ChangeEvent]] = []
        for eid, fields in entries:
            payload = fields.get(EVENT_FIELD) or fields.get(_s(EVENT_FIELD))  # type: ignore[call-overload]
            try:
                if payload is None:
                    raise DualwriteError("entry has no event field")
                good.append((eid, payload, ChangeEvent.from_json(payload)))
            except DualwriteError as exc:
                dead_letter(self.client, self.namespace, eid, payload or b"", str(exc), "decode")
                self.client.xack(self.key, self.group, eid)
                self.stats.dead += 1
                metrics.REPLAY_APPLIED.labels("dead").inc()
        if not good:
            return
        self.stats.batches += 1
        try:
            self._apply([ev for _, _, ev in good])
            self.client.xack(self.key, self.group, *[eid for eid, _, _ in good])
            self._last_ts = good[-1][2].ts
            return
        except OperationalError:
            raise  # Postgres unreachable: leave pending, the caller backs off
        except (DBAPIError, DualwriteError, ValueError, KeyError, TypeError) as exc:
            log.warning("replay batch of %d failed, applying one by one: %s", len(good), _line(exc))
        for eid, payload, ev in good:
            self._apply_one(eid, payload, ev)

    def _apply(self, events: list[ChangeEvent]) -> None:
        from dualwrite.apply import apply_events

        # Each event goes to the side opposite the primary that committed it (ev.origin); events
        # without an origin go to self.target. After a primary switch both kinds can be in flight.
        by_target: dict[str, list[ChangeEvent]] = {}
        for ev in events:
            by_target.setdefault(ev.target if ev.origin else self.target, []).append(ev)
        for target, evs in by_target.items():
            engine = self.dw.postgres_apply if target == "postgres" else self.dw.sqlite_apply
            with engine.begin() as conn:
                result = apply_events(conn, self.dw.catalog.table, evs)
            self._count(result)

    def _count(self, result: Any) -> None:
        self.stats.applied += result.applied
        self.stats.stale += result.stale
        metrics.REPLAY_APPLIED.labels("applied").inc(result.applied)
        metrics.REPLAY_APPLIED.labels("stale").inc(result.stale)

    def _apply_one(self, eid: bytes, payload: bytes, ev: ChangeEvent) -> None:
        error: BaseException | None = None
        for attempt in range(self.max_failures):
            try:
                self._apply([ev])
                self.client.xack(self.key, self.group, eid)
                self._last_ts = ev.ts
                return
            except OperationalError:
                raise
            except (DBAPIError, DualwriteError, ValueError, KeyError, TypeError) as exc:
                error = exc
                if isinstance(exc, UnknownTableError):
                    break
                time.sleep(0.02 * (attempt + 1))
        reason = "unknown_table" if isinstance(error, UnknownTableError) else "apply"
        dead_letter(self.client, self.namespace, eid, payload, _line(error) if error else "", reason)
        self.client.xack(self.key, self.group, eid)
        self.stats.dead += 1
        metrics.REPLAY_APPLIED.labels("dead").inc()
        log.warning("replay: event %s dead-lettered (%s): %s", _s(eid), reason, _line(error) if error else "")

    # -- lag -------------------------------------------------------------------------------------
    def group_info(self) -> dict[str, Any]:
        for g in self.client.xinfo_groups(self.key):
            name = _s(g.get("name") or g.get(b"name"))
            if name == self.group:
                return {_s(k): v for k, v in g.items()}
        return {}

    def update_lag(self) -> tuple[int, int]:
        info = self.group_info()
        lag = info.get("lag")
        pending = int(info.get("pending") or 0)
        if lag is None:  # Redis < 7: count entries after last-delivered-id
            last = _s(info.get("last-delivered-id") or "0-0")
            lag = len(self.client.xrange(self.key, min=f"({last}", count=100_000))
        lag = int(lag)
        metrics.REPLAY_LAG_EVENTS.set(lag + pending)
        metrics.REPLAY_PENDING.set(pending)
        if lag + pending == 0 or self._last_ts is None:
            metrics.REPLAY_LAG_SECONDS.set(0)
        else:
            metrics.REPLAY_LAG_SECONDS.set(max(0.0, (datetime.now(UTC) - self._last_ts).total_seconds()))
        return lag, pending

    def caught_up(self) -> bool:
        lag, pending = self.update_lag()
        return lag == 0 and pending == 0

    def run(self, *, once: bool = False, should_stop: Callable[[], bool] = lambda: False) -> ReplayStats:
        """Loop until should_stop(); with once=True stop when the group has nothing left."""
        self.ensure_group()
        backoff = 0.1
        while not should_stop():
            try:
                n = self.step()
                backoff = 0.1
            except (OperationalError, redis.ConnectionError) as exc:
                log.warning("replay: backend unavailable, retrying in %.1fs: %s", backoff, _line(exc))
                self._own_pending_done = False  # re-read what this consumer holds
                time.sleep(backoff)
                backoff = min(5.0, backoff * 2)
                continue
            if once and n == 0 and self.caught_up():
                break
        return self.stats


# -- dead letters -------------------------------------------------------------------------------
def list_dead_letters(client: redis.Redis, namespace: str, count: int = 100) -> list[dict[str, str]]:
    out = []
    for eid, fields in client.xrange(dead_letter_key(namespace), count=count):
        row = {"dead_id": _s(eid)}
        row.update({_s(k): _s(v) if k != b"payload" else _s(v)[:200] for k, v in fields.items()})
        out.append(row)
    return out


def redrive(dw: DualWriter, ids: list[str] | None = None, target: str = "postgres") -> dict[str, int]:
    """Re-apply dead letters directly through apply_events (stream ids can't go back) and delete each on
    success. Entries whose table is not in the catalog, or that still fail, stay in the dead-letter stream."""
    from dualwrite.apply import apply_events

    key = dead_letter_key(dw.settings.namespace)
    wanted = set(ids) if ids else None
    counts = {"applied": 0, "refused": 0, "failed": 0}
    for eid, fields in dw.redis.xrange(key):
        if wanted is not None and _s(eid) not in wanted:
            continue
        try:
            ev = ChangeEvent.from_json(fields.get(b"payload", b""))
            dw.catalog.table(ev.table)
        except DualwriteError as exc:
            counts["refused"] += 1
            log.warning("redrive: %s refused: %s", _s(eid), exc)
            continue
        side = ev.target if ev.origin else target  # the side opposite the primary that committed it
        engine = dw.postgres_apply if side == "postgres" else dw.sqlite_apply
        try:
            with engine.begin() as conn:
                apply_events(conn, dw.catalog.table, [ev])
        except (DBAPIError, ValueError, TypeError) as exc:
            counts["failed"] += 1
            log.warning("redrive: %s still fails: %s", _s(eid), _line(exc))
            continue
        dw.redis.xdel(key, eid)
        counts["applied"] += 1
    return counts
