"""The cutover phase: one value shared by every process, kept in Redis under the namespace.

Each process reads it through a short local cache (Settings.phase_cache_seconds, 0.5 s by default),
so a flip reaches every instance within a second. If Redis cannot be reached, the last value seen is
kept (or the `DUALWRITE_PHASE` setting / `sqlite` before any was seen): writes never stop for Redis.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import redis

from dualwrite.errors import PhaseError


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
    """Reads and writes the shared phase. Thread-safe; one per process is enough."""

    def __init__(
        self, client: redis.Redis, namespace: str, *, cache_seconds: float = 0.5, default: str | None = None
    ) -> None:
        self.client = client
        self.key = f"{namespace}:phase"
        self.history_key = f"{namespace}:phase:history"
        self.cache_seconds = cache_seconds
        self._default = get_phase(default or os.environ.get("DUALWRITE_PHASE") or "sqlite").name
        self._value = self._default
        self._read_at = 0.0
        self._lock = threading.Lock()
        self.redis_ok = True

    def current(self, *, fresh: bool = False) -> Phase:
        now = time.monotonic()
        if fresh or now - self._read_at >= self.cache_seconds:
            with self._lock:
                if fresh or now - self._read_at >= self.cache_seconds:
                    try:
                        raw = self.client.get(self.key)
                        self.redis_ok = True
                        if raw is not None:
                            self._value = get_phase(raw.decode() if isinstance(raw, bytes) else raw).name
                    except redis.RedisError:
                        self.redis_ok = False  # keep the last value seen
                    self._read_at = time.monotonic()
        return BY_NAME[self._value]

    def set(self, target: str, *, force: bool = False, reason: str = "", actor: str | None = None) -> Phase:
        """Move to `target`, recording who/when/why. Unsafe moves need force=True."""
        current = self.current(fresh=True).name
        get_phase(target)
        if not force:
            check_transition(current, target)
        entry = {
            "from": current,
            "to": target,
            "at": datetime.now(UTC).isoformat(),
            "by": actor or os.environ.get("USER") or "unknown",
            "reason": reason,
            "forced": force,
        }
        pipe = self.client.pipeline(transaction=True)
        pipe.set(self.key, target)
        pipe.rpush(self.history_key, json.dumps(entry))
        pipe.execute()
        with self._lock:
            self._value, self._read_at = target, time.monotonic()
        return BY_NAME[target]

    def history(self, limit: int = 50) -> list[dict[str, object]]:
        return [json.loads(x) for x in self.client.lrange(self.history_key, -limit, -1)]
