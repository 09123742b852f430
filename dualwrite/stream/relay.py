"""The relay: publishes outbox rows to the Redis stream in seq order, off the request path.

Each round finds the stream's top entry *of ours* (one script call), reads the outbox rows above it
(SQLite's outbox first: its seqs are the older ones after a primary switch), and pipelines one XADD per
row with the id `<seq>-0`. So the stream is the relay's cursor: a crash between XADD and anything else
loses nothing and duplicates nothing, and a second relay is harmless. If the stream is gone (Redis
restarted, it keeps nothing on disk), its top is 0 and every retained outbox row is published again
(counted as a reset); consumers are idempotent. Every `trim_every` seconds the stream is trimmed to what
every consumer group has acknowledged, less `stream_retention` entries; every `prune_every` seconds
published rows older than `retention` are pruned from the outbox (retention.py).

An entry is ours iff its id is `<n>-0` and its event's seq is n. Anything else at the top of the stream
(say an XADD with an auto id: a millisecond timestamp far above every seq) would make every later XADD of
ours fail as "equal or smaller" and be taken for published: silent loss. So the script moves such entries
to `<stream>:foreign` (with their original id), sets the stream's last id back to our top, and moves back
any consumer group that had already read past it, all atomically.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import redis
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import SQLAlchemyError

from dualwrite import metrics
from dualwrite.bookkeeping import outbox
from dualwrite.redis_keys import stream_key
from dualwrite.retry import outage, poll_until
from dualwrite.stream.protocol import entry_id
from dualwrite.stream.retention import StreamTrimmer, measure_outboxes, prune_outbox
from dualwrite.types import utcnow

if TYPE_CHECKING:
    from dualwrite.engines import Backends

log = logging.getLogger("dualwrite.stream.relay")
# How many quarantined foreign entries are kept (they are evidence, not data).
FOREIGN_MAXLEN = 10_000

# KEYS: stream, quarantine stream; ARGV: quarantine maxlen. Returns nil (no stream) or {our top seq, moved}.
OUR_TOP_LUA = """
local function ours(entry)
  local ms, sq = string.match(entry[1], '^(%d+)%-(%d+)$')
  if sq ~= '0' then return nil end
  local f = entry[2]
  for i = 1, #f, 2 do
    if f[i] == 'e' then
      local ok, doc = pcall(cjson.decode, f[i + 1])
      if ok and type(doc) == 'table' and doc['seq'] == tonumber(ms) then return ms end
      return nil
    end
  end
  return nil
end
local function newer(a, b)
  local am, as = string.match(a, '^(%d+)%-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)%-(%d+)$')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am > bm or (am == bm and as > bs)
end
if redis.call('EXISTS', KEYS[1]) == 0 then return nil end
local moved, top = 0, nil
while true do
  local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
  if last == nil then break end
  top = ours(last)
  if top then break end
  local fields = {'id', last[1]}
  for i = 1, #last[2] do fields[#fields + 1] = last[2][i] end
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', unpack(fields))
  redis.call('XDEL', KEYS[1], last[1])
  moved = moved + 1
end
local info, fields = redis.call('XINFO', 'STREAM', KEYS[1]), {}
for i = 1, #info, 2 do fields[info[i]] = info[i + 1] end
if top == nil then
  -- empty stream: its last id is our top if it looks like ours; otherwise start over from 0 (duplicates
  -- are harmless, a skipped seq is not)
  local ms, sq = string.match(fields['last-generated-id'], '^(%d+)%-(%d+)$')
  if moved == 0 and sq == '0' then top = ms else top = '0' end
end
if moved > 0 then
  local id = top .. '-0'
  -- Redis 7 also tracks entries-added and the max deleted id (for consumer lag): keep them consistent
  local done = false
  if fields['entries-added'] then
    local r = redis.pcall('XSETID', KEYS[1], id, 'ENTRIESADDED', fields['entries-added'] - moved, 'MAXDELETEDID', id)
    done = type(r) ~= 'table' or not r['err']
  end
  if not done then redis.call('XSETID', KEYS[1], id) end
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
    local name, last = nil, nil
    for i = 1, #g, 2 do
      if g[i] == 'name' then name = g[i + 1] elseif g[i] == 'last-delivered-id' then last = g[i + 1] end
    end
    if last and newer(last, id) then redis.call('XGROUP', 'SETID', KEYS[1], name, id) end
  end
end
return {top, moved}
"""


def foreign_key(stream: str) -> str:
    return f"{stream}:foreign"


class Wakeup:
    """Commit notifications for any number of relays: each has its own flag, so a commit that lands while
    a relay is busy publishing is not missed (it runs another round at once instead of after `interval`)."""

    def __init__(self) -> None:
        self._flags: list[threading.Event] = []
        self._lock = threading.Lock()

    def subscribe(self) -> threading.Event:
        flag = threading.Event()
        with self._lock:
            self._flags = [*self._flags, flag]
        return flag

    def unsubscribe(self, flag: threading.Event) -> None:
        with self._lock:
            self._flags = [f for f in self._flags if f is not flag]

    def notify(self) -> None:
        for flag in self._flags:  # copy-on-write list: no lock on the request path
            # already set: a round is due that starts after this commit (the relay clears the flag before
            # its round reads the outbox), so setting it again (a lock and a notify_all) would add nothing
            if not flag.is_set():
                flag.set()


class Relay:
    def __init__(
        self,
        client: redis.Redis,
        namespace: str,
        sources: list[tuple[str, Engine]],
        *,
        batch: int = 1000,
        retention: timedelta = timedelta(hours=24),
        stream_retention: int = 10_000,
        trim_every: float = 1.0,
        prune_every: float = 60.0,
        maxlen: int | None = None,
        wakeup: Wakeup | None = None,
        interval: float = 0.2,
        coalesce: float = 0.005,
        batch_every: float = 0.025,
    ) -> None:
        self.client, self.key = client, stream_key(namespace)
        self.sources = sources  # (backend name, engine) in publishing order
        self.batch, self.retention, self.maxlen = batch, retention, maxlen
        self.wakeup = wakeup or Wakeup()
        self.interval = interval
        self.coalesce = coalesce  # after a wake-up, let a burst of commits gather into one batch
        self.batch_every = batch_every  # rounds woken by commits begin at most this often (seconds)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seen_stream = False
        self._last_prune = 0.0
        self._last_trim = float("-inf")
        self.trim_every, self.prune_every = trim_every, prune_every
        self.trimmer = StreamTrimmer(client, self.key, stream_retention)
        self.trimmed = 0  # stream entries this relay trimmed
        self._top = 0  # the last cursor seen (for the backlog while Redis is away)
        self._cursor_script = client.register_script(OUR_TOP_LUA)
        self.published = 0
        self.foreign = 0  # foreign entries this relay moved off the top of the stream
        self.backlog = -1

    @classmethod
    def for_backends(cls, backends: Backends, **kw: Any) -> Relay:
        """A relay over both outboxes of `backends` (a writer passes its commit Wakeup as `wakeup`)."""
        sources = [("sqlite", backends.sqlite_read), ("postgres", backends.postgres)]
        s = backends.settings
        kw.setdefault("retention", timedelta(seconds=s.outbox_retention_s))
        kw.setdefault("stream_retention", s.stream_retention)
        return cls(backends.redis, s.namespace, sources, **kw)

    def run_once(self) -> int:
        """Publish what is pending; return how many events were added to the stream."""
        try:
            top = self.our_top()
        except redis.RedisError:
            self._measure_backlog(self._top)  # the outbox grows while Redis is away: keep the gauges honest
            raise
        if top is None:
            if self._seen_stream:
                metrics.STREAM_RESETS.inc()
                log.warning("stream %s is gone (Redis restarted?): republishing the retained outbox", self.key)
            top = 0
        added = 0
        for backend, engine in self.sources:
            try:
                added_here, top = self._publish_from(engine, top)
                added += added_here
            except SQLAlchemyError as exc:
                log.warning("relay cannot read the %s outbox: %s", backend, str(exc).splitlines()[0][:200])
                self._measure_backlog(top)
                break
        else:
            # every source was read up to a partial batch: nothing committed before this round is left
            self.backlog = 0
            metrics.OUTBOX_BACKLOG.set(0)
            metrics.RELAY_LAG.set(0)
        self._top = top
        self._seen_stream = self._seen_stream or added > 0 or top > 0
        if time.monotonic() - self._last_trim >= self.trim_every:
            self.trim()
        if time.monotonic() - self._last_prune > self.prune_every:
            self.prune(top)
        return added

    def trim(self) -> int:
        """Trim the stream to what every consumer group acknowledged, less the retention window."""
        self._last_trim = time.monotonic()
        try:
            n = self.trimmer.trim().trimmed
        except redis.RedisError as exc:  # the publishing went through; trimming waits for the next round
            log.warning("stream trim failed: %s", str(exc)[:200])
            return 0
        self.trimmed += n
        return n

    def our_top(self) -> int | None:
        """The seq of our newest entry in the stream (None: no stream). Foreign entries above it are moved
        to the quarantine stream first (see the module docstring)."""
        reply = self._cursor_script(keys=[self.key, foreign_key(self.key)], args=[FOREIGN_MAXLEN])
        if reply is None:
            return None
        top, moved = int(reply[0]), int(reply[1])
        if moved:
            self.foreign += moved
            log.warning(
                "moved %d foreign entr%s from the top of %s to %s; publishing resumes after seq %d",
                moved,
                "y" if moved == 1 else "ies",
                self.key,
                foreign_key(self.key),
                top,
            )
        return top

    def _measure_backlog(self, top: int) -> None:
        backlog, oldest = 0, None
        for _backend, engine in self.sources:
            try:
                b, o = self._backlog(engine, top)
            except SQLAlchemyError:
                continue
            backlog += b
            oldest = o if oldest is None or (o is not None and o < oldest) else oldest
        self.backlog = backlog
        metrics.OUTBOX_BACKLOG.set(backlog)
        metrics.RELAY_LAG.set(0 if oldest is None else max(0.0, (utcnow() - oldest).total_seconds()))

    def _publish_from(self, engine: Engine, top: int) -> tuple[int, int]:
        added = 0
        while True:
            with engine.connect() as conn:
                rows = conn.execute(
                    select(outbox.c.seq, outbox.c.payload)
                    .where(outbox.c.seq > top)
                    .order_by(outbox.c.seq)
                    .limit(self.batch)
                ).all()
            if not rows:
                return added, top
            pipe, batch_added = self.client.pipeline(transaction=False), 0
            for seq, payload in rows:
                kw = {"maxlen": self.maxlen, "approximate": True} if self.maxlen else {}
                pipe.xadd(self.key, {"e": payload}, id=entry_id(seq), **kw)
            results = pipe.execute(raise_on_error=False)
            for (seq, _), res in zip(rows, results, strict=True):
                if isinstance(res, Exception):
                    if "equal or smaller" not in str(res):  # another relay published it: fine
                        metrics.PUBLISH_FAILURES.inc()
                        raise res
                else:
                    batch_added += 1
                top = max(top, seq)
            metrics.EVENTS_PUBLISHED.inc(batch_added)
            self.published += batch_added
            added += batch_added
            if len(rows) < self.batch:
                return added, top

    def _backlog(self, engine: Engine, top: int) -> tuple[int, object]:
        with engine.connect() as conn:
            count, oldest = conn.execute(
                select(func.count(), func.min(outbox.c.created_at)).where(outbox.c.seq > top)
            ).one()
        return int(count), oldest

    def prune(self, top: int) -> int:
        """Delete published rows (seq <= top) older than the retention window, in batches; then export each
        outbox's size (dualwrite_outbox_rows)."""
        self._last_prune = time.monotonic()
        pruned = 0
        for _backend, engine in self.sources:
            try:
                write = engine if engine.dialect.name == "postgresql" else _writable(engine)
                try:
                    pruned += prune_outbox(write, top, self.retention)
                finally:
                    if write is not engine:
                        write.dispose()
            except SQLAlchemyError as exc:
                log.warning("outbox prune failed: %s", str(exc).splitlines()[0][:200])
        measure_outboxes(self.sources, self.retention)
        return pruned

    def drain(self, timeout: float = 30.0) -> bool:
        """Publish until the outbox is empty above the stream's top, or the timeout passes."""

        def published_all() -> bool:
            self.run_once()
            return self.backlog == 0

        return bool(poll_until(timeout, 0.05, published_all, errors=(redis.RedisError,)))

    # -- background thread -------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="dualwrite-relay", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        flag = self.wakeup.subscribe()

        started = [float("-inf")]  # when the last round began

        def wait_for_commits(seconds: float) -> None:
            """Until a commit wakes this relay (then a moment more, to batch a burst; and no sooner than
            `batch_every` after the last round began, so steady writes are published in batches of that
            many milliseconds, not a round per write competing with the writers for the GIL) or
            `seconds` pass."""
            if flag.wait(timeout=seconds):
                flag.clear()
                self._stop.wait(max(self.coalesce, started[0] + self.batch_every - time.monotonic()))

        def round_() -> int:
            started[0] = time.monotonic()
            return self.run_once()

        def on_failure(exc: BaseException, wait: float) -> None:
            if isinstance(exc, redis.RedisError):
                metrics.PUBLISH_FAILURES.inc()
                log.warning("relay: Redis unavailable (%s); the outbox keeps the events", str(exc)[:120])
            else:
                log.error("relay round failed", exc_info=exc)

        # the relay must outlive any single failure: retry.outage, woken early by a commit
        rounds = outage(self._stop.is_set, on_failure, errors=(Exception,), sleep=wait_for_commits)
        try:
            while not self._stop.is_set():
                try:
                    rounds(round_)
                except Exception:  # noqa: BLE001 - stopped while waiting out a failure
                    break
                wait_for_commits(self.interval)
        finally:
            self.wakeup.unsubscribe(flag)

    def stop(self) -> None:
        self._stop.set()
        self.wakeup.notify()
        if self._thread is not None:
            self._thread.join(timeout=10)


def _writable(read_engine: Engine) -> Engine:
    from dualwrite.engines import sqlite_engine

    return sqlite_engine(str(read_engine.url))
