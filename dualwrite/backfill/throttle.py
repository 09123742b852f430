"""Throttling the copy: limits an operator changes while it runs, and an automatic back-off (gh-ost style).

Live limits are the Redis hash `<namespace>:backfill:control` (`dualwrite backfill set` writes it); each
worker re-reads it between chunks (at most every `refresh_s`): max_rows_per_second, chunk_size,
max_pg_latency_ms, max_replication_lag_s, paused. A field that is absent keeps the value the worker was
started with; 0 removes the rate limit (and restores the worker's chunk size), while a threshold of 0
always backs off. If Redis is down the last limits read are kept.

Between two chunks a worker waits while
- paused                                                         reason `paused`
- the probe query `SELECT 1` on Postgres takes > max_pg_latency_ms  reason `pg_latency`
- the largest replay_lag in pg_stat_replication > max_replication_lag_s  reason `replication_lag`
re-checking every `probe_interval_s`, then takes tokens for the chunk's rows (reason `rate`). Reasons are
exported as dualwrite_throttle_active{reason} and published for `backfill status` under
`<namespace>:backfill:worker:<name>` (expires when the worker stops refreshing it).

The rate itself is a token bucket (`TokenBucket`): at most `rate` rows per second, with one second of burst.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, datetime
from typing import Any

import redis
from sqlalchemy import Engine, text

from dualwrite import metrics
from dualwrite.redis_keys import backfill_control_key, backfill_worker_key


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


log = logging.getLogger("dualwrite.backfill.throttle")
WORKER_TTL_S = 30
REPLICATION_LAG_SQL = "SELECT COALESCE(EXTRACT(EPOCH FROM MAX(replay_lag)), 0) FROM pg_stat_replication"


@dataclass(frozen=True)
class Limits:
    max_rows_per_second: float | None = None
    chunk_size: int | None = None
    max_pg_latency_ms: float | None = None
    max_replication_lag_s: float | None = None
    paused: bool = False

    def with_overrides(self, raw: dict[str, str]) -> Limits:
        """These limits with the control hash's fields applied (unknown or malformed fields ignored)."""
        changes: dict[str, Any] = {}
        for f in fields(self):
            value = raw.get(f.name)
            if value is None:
                continue
            try:
                if f.name == "paused":
                    changes[f.name] = value.lower() in ("1", "true", "yes")
                elif f.name == "chunk_size":
                    changes[f.name] = int(value) if int(value) > 0 else None
                elif f.name == "max_rows_per_second":
                    changes[f.name] = float(value) if float(value) > 0 else None
                else:  # a threshold: 0 is one (always back off); negative removes it
                    changes[f.name] = float(value) if float(value) >= 0 else None
            except ValueError:
                log.warning("backfill control: ignoring %s=%r", f.name, value)
        return replace(self, **changes)


def set_limits(client: redis.Redis, namespace: str, **changes: Any) -> dict[str, str]:
    """Write the given limits (None: leave as is) to the control hash; returns the whole hash."""
    values = {k: ("1" if v else "0") if isinstance(v, bool) else str(v) for k, v in changes.items() if v is not None}
    if values:
        client.hset(backfill_control_key(namespace), mapping=values)
    return read_overrides(client, namespace)


def clear_limits(client: redis.Redis, namespace: str) -> None:
    client.delete(backfill_control_key(namespace))


def read_overrides(client: redis.Redis, namespace: str) -> dict[str, str]:
    raw = client.hgetall(backfill_control_key(namespace))
    return {_s(k): _s(v) for k, v in raw.items()}


def live_workers(client: redis.Redis, namespace: str, postgres: Engine | None = None) -> list[dict[str, Any]]:
    """The state every running worker published (throttle reason, limits, what it does).

    With `postgres`, a worker whose Postgres session is gone (its lease liveness lock is free: it was
    killed) is left out and its entry removed at once, instead of lingering until its heartbeat expires."""
    listed: list[tuple[Any, dict[str, Any]]] = []
    for key in sorted(client.scan_iter(match=backfill_worker_key(namespace, "*"), count=100)):
        raw = client.get(key)
        if raw:
            listed.append((key, json.loads(raw)))
    owners = [int(w["lease_owner"]) for _k, w in listed if w.get("lease_owner")]
    if postgres is None or not owners:
        return [w for _k, w in listed]
    from dualwrite.backfill.leases import sessions_alive

    alive = sessions_alive(postgres, owners)
    out = []
    for key, w in listed:
        if w.get("lease_owner") and int(w["lease_owner"]) not in alive:
            log.info("backfill worker %s is gone (its Postgres session ended); dropping its heartbeat", w.get("worker"))
            client.delete(key)
            continue
        out.append(w)
    return out


def probe_latency_ms(engine: Engine) -> float:
    t0 = time.perf_counter()
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
        conn.rollback()
    return (time.perf_counter() - t0) * 1000.0


def probe_replication_lag_s(engine: Engine) -> float:
    with engine.connect() as conn:
        lag = conn.execute(text(REPLICATION_LAG_SQL)).scalar()
        conn.rollback()
    return float(lag or 0.0)


def over_limits(limits: Limits, latency_ms: float | None, lag_s: float | None) -> str | None:
    """The reason to hold the copy back now, or None."""
    if limits.paused:
        return "paused"
    if limits.max_pg_latency_ms is not None and latency_ms is not None and latency_ms > limits.max_pg_latency_ms:
        return "pg_latency"
    if limits.max_replication_lag_s is not None and lag_s is not None and lag_s > limits.max_replication_lag_s:
        return "replication_lag"
    return None


class Throttler(TokenBucket):
    """A TokenBucket (the Copier calls take() after each chunk) that also follows live limits and backs off."""

    def __init__(
        self,
        base: Limits,
        *,
        client: redis.Redis | None = None,
        namespace: str = "",
        probe_engine: Engine | None = None,
        name: str = "worker",
        refresh_s: float = 1.0,
        probe_interval_s: float = 0.5,
        on_chunk_size: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__(base.max_rows_per_second)
        self.base = base
        self.limits = base
        self.client = client
        self.namespace = namespace
        self.probe_engine = probe_engine
        self.name = name
        self.refresh_s = refresh_s
        self.probe_interval_s = probe_interval_s
        self.on_chunk_size = on_chunk_size
        self.activity = "starting"
        self.lease_owner: int | None = None  # the worker's lease liveness lock (leases.py), for live_workers
        self.reason: str | None = None
        self.since: datetime | None = None
        self.throttled_s = 0.0
        self._read_at = float("-inf")
        self.latency_ms: float | None = None
        self.lag_s: float | None = None
        self.apply(base)

    # -- limits ------------------------------------------------------------------------------------
    def refresh(self, force: bool = False) -> Limits:
        """Re-read the control hash (at most every refresh_s) and apply what changed."""
        if self.client is None or (not force and time.monotonic() - self._read_at < self.refresh_s):
            return self.limits
        self._read_at = time.monotonic()
        try:
            limits = self.base.with_overrides(read_overrides(self.client, self.namespace))
        except redis.RedisError as exc:
            log.warning("backfill control: Redis unavailable, keeping the current limits: %s", exc)
            return self.limits
        if limits != self.limits:
            log.info("backfill control: limits now %s", _describe(limits))
        self.apply(limits)
        return limits

    def apply(self, limits: Limits) -> None:
        self.limits = limits
        rate = limits.max_rows_per_second
        if (rate or None) != self.rate:
            self.rate = rate if rate and rate > 0 else None
            self.tokens = min(self.tokens, float(self.rate or 0))
        size = limits.chunk_size or self.base.chunk_size  # a cleared override restores the worker's own
        if size and self.on_chunk_size is not None:
            self.on_chunk_size(size)
        metrics.BACKFILL_RATE_LIMIT.set(self.rate or 0)
        metrics.BACKFILL_PAUSED.set(1 if limits.paused else 0)
        if size:
            metrics.BACKFILL_CHUNK_ROWS.set(size)

    # -- back-off ----------------------------------------------------------------------------------
    def check(self) -> str | None:
        """Probe what the limits ask for and return the reason to wait, if any."""
        self.latency_ms = self.lag_s = None
        if self.probe_engine is not None and not self.limits.paused:
            try:
                if self.limits.max_pg_latency_ms is not None:
                    self.latency_ms = probe_latency_ms(self.probe_engine)
                    metrics.BACKFILL_PG_LATENCY.set(self.latency_ms / 1000.0)
                if self.limits.max_replication_lag_s is not None:
                    self.lag_s = probe_replication_lag_s(self.probe_engine)
                    metrics.BACKFILL_REPLICATION_LAG.set(self.lag_s)
            except Exception as exc:  # noqa: BLE001 - Postgres not answering is a reason to wait, not to crash
                log.warning("backfill throttle: probe failed: %s", str(exc).splitlines()[0][:200])
                self.latency_ms = float("inf")
        return over_limits(self.limits, self.latency_ms, self.lag_s)

    def take(self, n: int, stop: Callable[[], bool] = lambda: False) -> None:
        """Wait while a back-off reason holds, then for the rate limit's tokens."""
        self.refresh()
        started = time.monotonic()
        while not stop():
            reason = self.check()
            self._set_reason(reason)
            if reason is None:
                break
            self.publish()
            end = time.monotonic() + self.probe_interval_s
            while not stop() and time.monotonic() < end:
                time.sleep(min(0.05, self.probe_interval_s))
            self.refresh()
        self._set_reason(None)
        self.throttled_s += time.monotonic() - started
        self.publish()
        super().take(n, stop)

    def _set_reason(self, reason: str | None) -> None:
        if reason == self.reason:
            return
        if self.reason is not None:
            metrics.THROTTLE_ACTIVE.labels(self.reason).set(0)
        if reason is not None:
            metrics.THROTTLE_ACTIVE.labels(reason).set(1)
            log.info("backfill throttled (%s): %s", reason, self._why(reason))
        elif self.reason is not None:
            log.info("backfill throttle lifted (was %s)", self.reason)
        self.reason = reason
        self.since = datetime.now(UTC) if reason else None

    def _why(self, reason: str) -> str:
        if reason == "pg_latency":
            return f"probe {self.latency_ms:.1f} ms > {self.limits.max_pg_latency_ms} ms"
        if reason == "replication_lag":
            return f"replica lag {self.lag_s:.1f} s > {self.limits.max_replication_lag_s} s"
        return "paused by an operator (dualwrite backfill set --resume)"

    # -- status ------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "worker": self.name,
            "activity": self.activity,
            "throttle": self.reason,
            "throttled_since": self.since.isoformat() if self.since else None,
            "limits": {k: v for k, v in asdict(self.limits).items() if v is not None and v is not False},
            "at": datetime.now(UTC).isoformat(),
            **({"lease_owner": self.lease_owner} if self.lease_owner else {}),
        }

    def publish(self) -> None:
        if self.client is None:
            return
        try:
            self.client.set(backfill_worker_key(self.namespace, self.name), json.dumps(self.state()), ex=WORKER_TTL_S)
        except redis.RedisError:
            pass  # status is best effort; the copy goes on

    def close(self) -> None:
        self._set_reason(None)
        if self.client is not None:
            try:
                self.client.delete(backfill_worker_key(self.namespace, self.name))
            except redis.RedisError:
                pass


def _describe(limits: Limits) -> str:
    return ", ".join(f"{k}={v}" for k, v in asdict(limits).items() if v is not None and v is not False) or "none"


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v
