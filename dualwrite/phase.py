"""The cutover phase: one value shared by every process.

The phase of record lives in the databases (`_dw_meta` on both sides, see phase_record.py); Redis holds
its fast copy under the namespace, which each process reads through a short local cache
(Settings.phase_cache_seconds, 0.5 s by default), so a flip reaches every instance within a second. When
Redis is empty (restarted), unreachable or behind, the record decides (and is copied back to Redis):
writes never stop for Redis, and an instance started after a Redis restart finds the real phase. Before
any phase was recorded, `DUALWRITE_PHASE` / `sqlite` is the phase.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis

from dualwrite.errors import PhaseError, PhaseUnknownError, first_line
from dualwrite.redis_keys import phase_epoch_key, phase_history_key, phase_key

log = logging.getLogger("dualwrite.phase")


@dataclass(frozen=True)
class Phase:
    name: str
    primary: str  # the backend written first, holding the outbox
    secondary_written: bool  # whether the other backend is written too
    reads: str  # the backend reads are served from
    shadow: str | None  # the backend shadow reads compare against (None: no shadow reads)

    @property
    def secondary(self) -> str | None:
        if not self.secondary_written:
            return None
        return "postgres" if self.primary == "sqlite" else "sqlite"

    @property
    def sqlite_complete(self) -> bool:
        """SQLite holds every committed change in this phase (it is written)."""
        return self.primary == "sqlite" or self.secondary_written


PHASES: tuple[Phase, ...] = (
    Phase("sqlite", "sqlite", False, "sqlite", None),
    Phase("dual_write", "sqlite", True, "sqlite", None),
    Phase("shadow", "sqlite", True, "sqlite", "postgres"),
    Phase("postgres_reads", "sqlite", True, "postgres", "sqlite"),
    Phase("postgres_primary", "postgres", True, "postgres", None),
    Phase("postgres", "postgres", False, "postgres", None),
)
BY_NAME = {p.name: p for p in PHASES}
SIDES = ("sqlite", "postgres")


@dataclass(frozen=True)
class Record:
    """A phase with its epoch: raised by one at every change, so wherever copies disagree the newest wins."""

    phase: str
    epoch: int


ORDER = {p.name: i for i, p in enumerate(PHASES)}


def get_phase(name: str) -> Phase:
    try:
        return BY_NAME[name]
    except KeyError:
        raise PhaseError(f"unknown phase {name!r}; phases are: {', '.join(BY_NAME)}") from None


def check_transition(current: str, target: str) -> None:
    """Raise PhaseError if moving current -> target is unsafe (a --force skips this check)."""
    cur, tgt = ORDER[get_phase(current).name], ORDER[get_phase(target).name]
    if tgt > cur + 1:
        raise PhaseError(
            f"refusing to jump from {current} to {target}: move one phase at a time "
            f"(next is {PHASES[cur + 1].name}), or force it"
        )
    if tgt < cur and not get_phase(current).sqlite_complete and get_phase(target).sqlite_complete:
        raise PhaseError(
            f"refusing to roll back from {current} to {target}: SQLite has not been written since "
            f"{current} began, so it misses changes; re-backfill SQLite first, or force it"
        )


class PhaseStore:
    """Reads and writes the shared phase. Thread-safe; one per process is enough.

    With `record` (a phase_record.PhaseRecord, as Backends builds it) the databases hold the phase of
    record and Redis its fast copy: Redis is read through the cache; when it is empty (restarted),
    unreachable, unversioned or older than the newest epoch this process has seen, the record decides and
    is put back into Redis. A process that has never read a phase and can read neither raises
    PhaseUnknownError rather than guess (it must not write). Without `record` (tools, tests), Redis alone.
    """

    def __init__(
        self,
        client: redis.Redis,
        namespace: str,
        *,
        cache_seconds: float = 0.5,
        default: str | None = None,
        record: Any = None,
    ) -> None:
        self.client = client
        self.key = phase_key(namespace)
        self.epoch_key = phase_epoch_key(namespace)
        self.history_key = phase_history_key(namespace)
        self.cache_seconds = cache_seconds
        self.record = record
        self._default = get_phase(default or os.environ.get("DUALWRITE_PHASE") or "sqlite").name
        self._value = self._default
        self._epoch = 0  # the newest epoch seen (Redis' copy or the record)
        self._known = False  # some source has answered (else there is no phase to keep)
        self.source = "default"  # where the value came from: redis, record, default
        self._read_at = float("-inf")
        self._lock = threading.Lock()
        self.redis_ok = True
        self._redis_error = ""

    @property
    def epoch(self) -> int:
        return self._epoch

    def current(self, *, fresh: bool = False, verify: bool = False) -> Phase:
        """The phase (cached for cache_seconds; fresh: read now). verify: also ask the record, even when
        Redis answers (a writer that met a retired primary: Redis' copy may be stale)."""
        now = time.monotonic()
        if fresh or verify or now - self._read_at >= self.cache_seconds:
            with self._lock:
                if fresh or verify or now - self._read_at >= self.cache_seconds:
                    self._refresh(verify=verify)
                    self._read_at = time.monotonic()
        return BY_NAME[self._value]

    def _refresh(self, *, verify: bool = False) -> None:
        name, epoch = self._from_redis()
        if self.record is None:
            if name is not None:
                self._adopt(name, epoch or 0, "redis")
            return  # Redis down: the last value seen is kept
        if name is not None and epoch is not None and epoch >= self._epoch and not verify:
            self._adopt(name, epoch, "redis")
            return
        # Redis empty, unreachable, unversioned or behind this process: the databases decide. Without
        # Redis, a process that knows its phase asks only its primary (every change is recorded there).
        sides = (BY_NAME[self._value].primary,) if self._known and not self.redis_ok else SIDES
        try:
            rec = self.record.read(sides)
        except PhaseUnknownError as exc:
            if not self._known:
                raise PhaseUnknownError(f"{exc}; redis: {self._redis_error or 'no phase'}") from None
            log.warning("phase: keeping %s (epoch %d): %s", self._value, self._epoch, exc)
            return
        if rec is None:  # nothing recorded yet: Redis' copy from before records existed, else the default
            self._adopt(name or self._default, 0, "redis" if name else "default")
        elif name is not None and epoch is not None and epoch >= max(rec.epoch, self._epoch):
            self._adopt(name, epoch, "redis")  # verified: Redis' copy is current
        elif rec.epoch >= self._epoch:
            self._adopt(rec.phase, rec.epoch, "record")
            if self.redis_ok and (epoch is None or epoch < rec.epoch):
                self._copy_to_redis(rec)

    def _from_redis(self) -> tuple[str | None, int | None]:
        try:
            raw, raw_epoch = self.client.mget(self.key, self.epoch_key)
        except redis.RedisError as exc:
            self.redis_ok, self._redis_error = False, first_line(exc, 200)
            return None, None
        self.redis_ok, self._redis_error = True, ""
        name = None if raw is None else get_phase(raw.decode() if isinstance(raw, bytes) else raw).name
        try:
            epoch = None if raw_epoch is None else int(raw_epoch)
        except ValueError:
            epoch = None
        return name, epoch

    def _adopt(self, name: str, epoch: int, source: str) -> None:
        self._value, self._epoch, self._known, self.source = name, epoch, True, source

    def _copy_to_redis(self, rec: Record) -> None:
        """Put the record back as Redis' copy unless Redis already holds this epoch or a newer one."""
        try:
            self.client.eval(_COPY_IF_NEWER, 2, self.key, self.epoch_key, rec.phase, rec.epoch)
        except redis.RedisError as exc:
            log.warning("phase: could not refresh Redis' copy: %s", first_line(exc, 200))

    def prepare(self, target: str, *, force: bool = False) -> tuple[Record, str]:
        """The record of a move to `target` (refused unless safe or forced) and the phase it leaves."""
        current = self.current(fresh=True).name
        get_phase(target)
        if self.record is not None:
            rec = self.record.read()
            if rec is not None and rec.epoch > self._epoch:  # Redis' copy lags the record
                with self._lock:
                    self._adopt(rec.phase, rec.epoch, "record")
                current = rec.phase
        if not force:
            check_transition(current, target)
        return Record(get_phase(target).name, self._epoch + 1), current

    def set(self, target: str, *, force: bool = False, reason: str = "", actor: str | None = None) -> Phase:
        """Move to `target`, recording who/when/why. Unsafe moves need force=True."""
        rec, current = self.prepare(target, force=force)
        if self.record is not None:
            self.record.write(rec)
        self.publish(rec, current, force=force, reason=reason, actor=actor)
        return BY_NAME[rec.phase]

    def publish(self, rec: Record, previous: str, *, force: bool, reason: str, actor: str | None) -> None:
        """Make `rec` (already recorded in the databases, if this store has a record) Redis' copy and add
        the history entry. Without a record Redis must take it; with one, a Redis failure only delays the
        copy (the processes find the record meanwhile)."""
        entry = {
            "from": previous,
            "to": rec.phase,
            "at": datetime.now(UTC).isoformat(),
            "by": actor or os.environ.get("USER") or "unknown",
            "reason": reason,
            "forced": force,
        }
        pipe = self.client.pipeline(transaction=True)
        pipe.set(self.key, rec.phase)
        pipe.set(self.epoch_key, rec.epoch)
        pipe.rpush(self.history_key, json.dumps(entry))
        try:
            pipe.execute()
        except redis.RedisError as exc:
            if self.record is None:
                raise
            log.warning("phase %s recorded (epoch %d) but Redis not updated: %s", rec.phase, rec.epoch, exc)
        with self._lock:
            self._adopt(rec.phase, rec.epoch, "record" if self.record is not None else "redis")
            self._read_at = time.monotonic()

    def history(self, limit: int = 50) -> list[dict[str, object]]:
        return [json.loads(x) for x in self.client.lrange(self.history_key, -limit, -1)]


# KEYS: phase, epoch; ARGV: phase, epoch. Sets both only if Redis holds no epoch or an older one.
_COPY_IF_NEWER = """
local held = tonumber(redis.call('GET', KEYS[2]) or '-1') or -1
if held < tonumber(ARGV[2]) then
  redis.call('SET', KEYS[1], ARGV[1])
  redis.call('SET', KEYS[2], ARGV[2])
  return 1
end
return 0
"""
