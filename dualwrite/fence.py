"""The write fence: a flip that moves the primary or the read source pauses every application instance's
writes for a bounded moment, across processes, instead of racing them (Vitess SwitchTraffic's "stop
writes, catch up, switch, resume"; gh-ost's cut-over lock with a timeout).

Every DualWriter is a member: it heartbeats into the sorted set `{ns}:fence:instances` (score: Unix
time, every HEARTBEAT_SECONDS) and listens on the channel `{ns}:fence:events`. A flipper (Fence):

1. raises the fence: `{ns}:fence` = {epoch, deadline, timeout} (SET NX with an expiry, so a flipper that
   dies never leaves it up), published on the channel; then reads the live members (heartbeat younger
   than EXPIRY_SECONDS);
2. each member holds new transactions (begin() waits), lets its in-flight ones finish, and acknowledges
   in `{ns}:fence:acks:<epoch>`; it holds at most until the fence's deadline, whatever happens;
3. the flipper waits for every acknowledgement and for the catch-up (the cutover role's part), moves
   the phase, and lifts the fence (DEL + publish); members re-read the phase before they release their
   writers, and report each held write's pause in `{ns}:fence:reports:<epoch>`.

A member that dies while fenced blocks nobody: the others hold only until the deadline, and the flipper
gives up at its own bound, lifts, and names the member that did not acknowledge. Redis being
unreachable never holds a write (no fence can be seen, none is waited for). Each held write's pause is
observed in `dualwrite_fence_pause_seconds`.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from dualwrite import metrics
from dualwrite.errors import PhaseError, first_line
from dualwrite.redis_keys import (
    fence_acks_key,
    fence_channel,
    fence_epoch_key,
    fence_instances_key,
    fence_key,
    fence_reports_key,
)

log = logging.getLogger("dualwrite.fence")
HEARTBEAT_SECONDS = 1.0
EXPIRY_SECONDS = 3.0  # a member silent this long is gone (dead, or Redis unreachable from it)
DEFAULT_TIMEOUT = 0.5  # the longest a write is held, by default
_RECORDS_TTL = 600  # acks and reports outlive the fence for the flipper's summary, then go


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_fence(client: redis.Redis, namespace: str) -> dict[str, Any] | None:
    raw = client.get(fence_key(namespace))
    return None if raw is None else json.loads(raw)


def live_members(client: redis.Redis, namespace: str) -> list[str]:
    """The members whose heartbeat is younger than EXPIRY_SECONDS (long-gone ones are pruned)."""
    now = time.time()
    key = fence_instances_key(namespace)
    client.zremrangebyscore(key, "-inf", now - 3600)
    return sorted(_text(m) for m in client.zrangebyscore(key, now - EXPIRY_SECONDS, "+inf"))


class FenceMember:
    """One application instance's part (a DualWriter has one): enter()/exit() around each write
    transaction; a thread heartbeats, watches for a fence and holds/acknowledges/releases."""

    def __init__(self, client: redis.Redis, namespace: str, *, on_lift: Callable[[], Any] | None = None) -> None:
        self.client, self.namespace = client, namespace
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.on_lift = on_lift
        self._cond = threading.Condition()
        self._held = False
        self._hold_until = 0.0
        self._inflight = 0
        self._waiters: dict[object, float] = {}  # held writes: token -> when they began waiting
        self._pauses: list[float] = []  # this fence's pauses so far
        self._seen_epoch = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the write path -------------------------------------------------------------------------
    def enter(self) -> None:
        """Before a write transaction: wait while fenced (at most until the fence's deadline)."""
        with self._cond:
            if self._held:
                token, t0 = object(), time.monotonic()
                self._waiters[token] = t0
                while self._held and (left := self._hold_until - time.monotonic()) > 0:
                    self._cond.wait(left)
                if token in self._waiters:  # the deadline came first: released by itself
                    del self._waiters[token]
                    self._pause(time.monotonic() - t0)
            self._inflight += 1

    def exit(self) -> None:
        with self._cond:
            self._inflight -= 1
            if self._inflight == 0:
                self._cond.notify_all()

    def _pause(self, seconds: float) -> None:
        self._pauses.append(seconds)
        metrics.FENCE_PAUSE.observe(seconds)

    # -- the member's thread --------------------------------------------------------------------
    def start(self) -> None:
        """Watch in a thread: it registers (heartbeat) and looks for a fence already up, first thing; the
        constructor of a writer never waits for Redis."""
        self._thread = threading.Thread(target=self._run, name="dualwrite-fence", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        try:
            self.client.publish(fence_channel(self.namespace), f"bye:{self.id}")  # wakes the thread's listen
        except redis.RedisError:
            pass
        if self._thread is not None:
            self._thread.join(2)
        self._release(None)
        try:  # after the thread: no heartbeat can put it back
            self.client.zrem(fence_instances_key(self.namespace), self.id)
        except redis.RedisError:
            pass  # it expires by itself

    def _heartbeat(self) -> None:
        self.client.zadd(fence_instances_key(self.namespace), {self.id: time.time()})

    def _run(self) -> None:
        pubsub = None
        beat_at = float("-inf")
        look = True  # at once: a fence may already stand
        while not self._stop.is_set():
            try:
                if pubsub is None:
                    pubsub = self.client.pubsub(ignore_subscribe_messages=True)
                    pubsub.subscribe(fence_channel(self.namespace))
                if time.monotonic() - beat_at >= HEARTBEAT_SECONDS:
                    self._heartbeat()
                    beat_at = time.monotonic()
                msg = None if look else pubsub.get_message(timeout=HEARTBEAT_SECONDS / 2)
                look = False
                if msg is None or _text(msg.get("data", b"")).startswith("raise:"):
                    current = read_fence(self.client, self.namespace)
                    if current is not None:
                        self._fenced(current, pubsub)
            except (redis.RedisError, OSError, ValueError) as exc:
                if self._stop.is_set():
                    break
                log.warning("fence: %s: %s", self.id, first_line(exc, 200))
                self._release(None)
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:  # noqa: BLE001 - a broken connection is dropped either way
                        pass
                pubsub = None
                self._stop.wait(0.5)
        if pubsub is not None:
            try:
                pubsub.close()
            except Exception:  # noqa: BLE001 - closing on the way out
                pass

    def _hold(self, fence: dict[str, Any]) -> int | None:
        """Start holding new writes for `fence`; None when it is stale or already handled."""
        epoch = int(fence["epoch"])
        left = min(float(fence["deadline"]) - time.time(), float(fence["timeout"]))
        if epoch <= self._seen_epoch or left <= 0:
            return None
        self._seen_epoch = epoch
        with self._cond:
            self._held, self._hold_until, self._pauses = True, time.monotonic() + left, []
        return epoch

    def _fenced(self, fence: dict[str, Any], pubsub: Any) -> None:
        epoch = self._hold(fence)
        if epoch is None:
            return
        with self._cond:  # the in-flight transactions finish (new ones wait in enter())
            while self._inflight > 0 and (left := self._hold_until - time.monotonic()) > 0:
                self._cond.wait(left)
            drained = self._inflight == 0
            until = self._hold_until
        if drained:
            self.client.hset(fence_acks_key(self.namespace, epoch), self.id, json.dumps({"at": time.time()}))
            self.client.expire(fence_acks_key(self.namespace, epoch), _RECORDS_TTL)
            self.client.publish(fence_channel(self.namespace), f"ack:{epoch}")
        while (left := until - time.monotonic()) > 0 and not self._stop.is_set():
            msg = pubsub.get_message(timeout=min(left, 0.05))
            if msg is not None and _text(msg.get("data", b"")) != f"lift:{epoch}":
                continue
            current = read_fence(self.client, self.namespace)
            if current is None or int(current["epoch"]) != epoch:
                break
        if self.on_lift is not None:
            try:
                self.on_lift()  # the new phase, before any held write goes on
            except Exception as exc:  # noqa: BLE001 - the writes re-read it themselves then
                log.warning("fence: re-reading the phase after the fence: %s", first_line(exc, 200))
        pauses = self._release(epoch)
        report = {"held": len(pauses), "pauses": [round(p, 6) for p in pauses], "drained": drained}
        self.client.hset(fence_reports_key(self.namespace, epoch), self.id, json.dumps(report))
        self.client.expire(fence_reports_key(self.namespace, epoch), _RECORDS_TTL)
        self.client.publish(fence_channel(self.namespace), f"released:{epoch}")

    def _release(self, epoch: int | None) -> list[float]:
        with self._cond:
            now = time.monotonic()
            for t0 in self._waiters.values():
                self._pause(now - t0)
            self._waiters.clear()
            self._held = False
            self._cond.notify_all()
            pauses, self._pauses = self._pauses, []
        return pauses


@dataclass
class FenceSummary:
    """What one fence did: who acknowledged, how long it stood, each held write's pause."""

    epoch: int
    timeout: float
    members: list[str]
    acked: list[str] = field(default_factory=list)
    held_seconds: float = 0.0
    pauses: list[float] = field(default_factory=list)
    reported: list[str] = field(default_factory=list)
    steps: dict[str, float] = field(default_factory=dict)  # seconds of each fenced step (ack, catch_up, move)
    attempts: int = 1  # fences raised for this move (the pauses are those of all of them)

    @property
    def missing(self) -> list[str]:
        return [m for m in self.members if m not in self.acked]

    def percentile(self, q: float) -> float:
        if not self.pauses:
            return 0.0
        ordered = sorted(self.pauses)
        return ordered[min(len(ordered) - 1, max(0, int(round(q * (len(ordered) - 1)))))]

    def pause_quantiles(self) -> dict[str, float]:
        return {"p50": self.percentile(0.5), "p99": self.percentile(0.99), "max": max(self.pauses, default=0.0)}

    # a report object spelled out key by key, like cutover.flip's: different reports, nothing shared
    def to_dict(self) -> dict[str, Any]:
        # the flip report's "fence" object (operators' tooling reads it): its keys are spelled out
        return {
            "epoch": self.epoch,
            "timeout_seconds": self.timeout,
            "members": self.members,
            "acknowledged": self.acked,
            "missing": self.missing,
            "held_seconds": round(self.held_seconds, 4),
            "writes_held": len(self.pauses),
            **{f"pause_{q}_seconds": round(v, 4) for q, v in self.pause_quantiles().items()},
            "steps_seconds": self.steps,
            "attempts": self.attempts,
        }

    def line(self) -> str:
        ms = 1000
        return (
            ("" if self.attempts == 1 else f"fence (attempt {self.attempts}): ")
            + ("fence: " if self.attempts == 1 else "")
            + f"{len(self.acked)}/{len(self.members)} instance(s) acknowledged, "
            f"held {self.held_seconds * ms:.0f} ms "
            f"(timeout {self.timeout * ms:.0f} ms); {len(self.pauses)} write(s) paused: "
            + ", ".join(f"{q} {v * ms:.1f} ms" for q, v in self.pause_quantiles().items())
            + (" [" + ", ".join(f"{k} {v * ms:.0f} ms" for k, v in self.steps.items()) + "]" if self.steps else "")
        )


class Fence:
    """The flipper's side: raise, wait for the acknowledgements, lift, summarise."""

    def __init__(
        self, client: redis.Redis, namespace: str, *, timeout: float = DEFAULT_TIMEOUT, label: str = ""
    ) -> None:
        self.client, self.namespace, self.timeout, self.label = client, namespace, timeout, label
        self.summary: FenceSummary | None = None
        self._raised_at = 0.0

    def raise_(self) -> FenceSummary:
        """Raise the fence (refused while another stands) and return its summary-to-be with the members."""
        epoch = int(self.client.incr(fence_epoch_key(self.namespace)))
        doc = {"epoch": epoch, "deadline": time.time() + self.timeout, "timeout": self.timeout, "flip": self.label}
        ttl_ms = int((self.timeout + 2.0) * 1000)
        if not self.client.set(fence_key(self.namespace), json.dumps(doc), nx=True, px=ttl_ms):
            other = read_fence(self.client, self.namespace) or {}
            raise FenceBusyError(f"another flip is fencing the writers ({other.get('flip', '?')}); try again")
        self._raised_at = time.monotonic()
        self.client.publish(fence_channel(self.namespace), f"raise:{epoch}")
        self.summary = FenceSummary(epoch, self.timeout, live_members(self.client, self.namespace))
        return self.summary

    @property
    def deadline(self) -> float:
        """When the members stop holding (monotonic clock of this process)."""
        return self._raised_at + self.timeout

    def wait_acks(self, until: float) -> list[str]:
        """Wait (until the monotonic `until`) for every member to acknowledge; the ones that did not."""
        assert self.summary is not None
        while True:
            acked = {_text(k) for k in self.client.hkeys(fence_acks_key(self.namespace, self.summary.epoch))}
            self.summary.acked = [m for m in self.summary.members if m in acked]
            if not self.summary.missing or time.monotonic() >= until:
                return self.summary.missing
            time.sleep(0.002)

    def lift(self) -> None:
        """Take the fence down (only ours) and tell the members."""
        if self.summary is None:
            return
        self.client.eval(_DELETE_IF_EPOCH, 1, fence_key(self.namespace), self.summary.epoch)
        self.client.publish(fence_channel(self.namespace), f"lift:{self.summary.epoch}")
        self.summary.held_seconds = time.monotonic() - self._raised_at

    def collect(self, wait: float = 2.0) -> FenceSummary:
        """After lift: gather the acknowledged members' pause reports (waiting up to `wait` seconds)."""
        assert self.summary is not None
        end = time.monotonic() + wait
        while True:
            raw = self.client.hgetall(fence_reports_key(self.namespace, self.summary.epoch))
            if set(self.summary.acked) <= {_text(k) for k in raw} or time.monotonic() >= end:
                break
            time.sleep(0.01)
        self.summary.reported = sorted(_text(k) for k in raw)
        self.summary.pauses = [p for v in raw.values() for p in json.loads(v)["pauses"]]
        return self.summary


class FenceBusyError(PhaseError):
    """Another flip's fence stands."""


# KEYS: fence; ARGV: epoch. Deletes the fence only if it is this epoch's.
_DELETE_IF_EPOCH = """
local raw = redis.call('GET', KEYS[1])
if raw and cjson.decode(raw)['epoch'] == tonumber(ARGV[1]) then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
