"""The relay: publishes outbox rows to the Redis stream in seq order, off the request path.

Each round asks the stream for its top seq (one XINFO), reads the outbox rows above it (SQLite's outbox
first: its seqs are the older ones after a primary switch), and pipelines one XADD per row with the id
`<seq>-0`. So the stream is the relay's cursor: a crash between XADD and anything else loses nothing and
duplicates nothing, and a second relay is harmless. If the stream is gone (Redis restarted, it keeps
nothing on disk), its top is 0 and every retained outbox row is published again (counted as a reset);
consumers are idempotent. Published rows older than the retention window are pruned.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta
from typing import TYPE_CHECKING

import redis
from sqlalchemy import Engine, delete, func, select
from sqlalchemy.exc import SQLAlchemyError

from dualwrite import metrics
from dualwrite.internal import outbox
from dualwrite.stores.base import utcnow
from dualwrite.stream import entry_id, stream_key, top_seq

if TYPE_CHECKING:
    from dualwrite.adapter import DualWriter

log = logging.getLogger("dualwrite.relay")


class Relay:
    def __init__(
        self,
        client: redis.Redis,
        namespace: str,
        sources: list[tuple[str, Engine]],
        *,
        batch: int = 1000,
        retention: timedelta = timedelta(hours=24),
        maxlen: int | None = None,
        wakeup: threading.Condition | None = None,
        interval: float = 0.2,
    ) -> None:
        self.client, self.key = client, stream_key(namespace)
        self.sources = sources  # (backend name, engine) in publishing order
        self.batch, self.retention, self.maxlen = batch, retention, maxlen
        self.wakeup = wakeup or threading.Condition()
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seen_stream = False
        self._last_prune = 0.0
        self.published = 0
        self.backlog = -1

    @classmethod
    def for_writer(cls, dw: DualWriter, **kw: object) -> Relay:
        return cls(
            dw.redis,
            dw.settings.namespace,
            [("sqlite", dw.sqlite_read), ("postgres", dw.postgres)],
            wakeup=dw.committed,
            **kw,
        )  # type: ignore[arg-type]

    def run_once(self) -> int:
        """Publish what is pending; return how many events were added to the stream."""
        top = top_seq(self.client, self.key)
        if top is None:
            if self._seen_stream:
                metrics.STREAM_RESETS.inc()
                log.warning("stream %s is gone (Redis restarted?): republishing the retained outbox", self.key)
            top = 0
        added = 0
        backlog, oldest = 0, None
        for backend, engine in self.sources:
            try:
                added_here, top = self._publish_from(engine, top)
                added += added_here
                b, o = self._backlog(engine, top)
                backlog += b
                oldest = o if oldest is None or (o is not None and o < oldest) else oldest
            except SQLAlchemyError as exc:
                log.warning("relay cannot read the %s outbox: %s", backend, str(exc).splitlines()[0][:200])
        self._seen_stream = self._seen_stream or added > 0 or top > 0
        self.backlog = backlog
        metrics.OUTBOX_BACKLOG.set(backlog)
        metrics.RELAY_LAG.set(0 if oldest is None else max(0.0, (utcnow() - oldest).total_seconds()))
        if time.monotonic() - self._last_prune > 60:
            self.prune(top)
        return added

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
            pipe = self.client.pipeline(transaction=False)
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
                    added += 1
                top = max(top, seq)
            metrics.EVENTS_PUBLISHED.inc(added)
            self.published += added
            if len(rows) < self.batch:
                return added, top

    def _backlog(self, engine: Engine, top: int) -> tuple[int, object]:
        with engine.connect() as conn:
            count, oldest = conn.execute(
                select(func.count(), func.min(outbox.c.created_at)).where(outbox.c.seq > top)
            ).one()
        return int(count), oldest

    def prune(self, top: int) -> int:
        """Delete published rows older than the retention window (kept to rebuild a lost stream)."""
        self._last_prune = time.monotonic()
        cutoff, pruned = utcnow() - self.retention, 0
        for _backend, engine in self.sources:
            try:
                write = engine if engine.dialect.name == "postgresql" else _writable(engine)
                try:
                    with write.begin() as conn:
                        pruned += (
                            conn.execute(
                                delete(outbox).where(outbox.c.seq <= top, outbox.c.created_at < cutoff)
                            ).rowcount
                            or 0
                        )
                finally:
                    if write is not engine:
                        write.dispose()
            except SQLAlchemyError as exc:
                log.warning("outbox prune failed: %s", str(exc).splitlines()[0][:200])
        return pruned

    def drain(self, timeout: float = 30.0) -> bool:
        """Publish until the outbox is empty above the stream's top, or the timeout passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.run_once()
                if self.backlog == 0:
                    return True
            except redis.RedisError:
                pass
            time.sleep(0.05)
        return False

    # -- background thread -------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="dualwrite-relay", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        backoff = self.interval
        while not self._stop.is_set():
            try:
                self.run_once()
                backoff = self.interval
            except redis.RedisError as exc:
                metrics.PUBLISH_FAILURES.inc()
                log.warning("relay: Redis unavailable (%s); the outbox keeps the events", str(exc)[:120])
                backoff = min(backoff * 2, 5.0)
            except Exception:  # noqa: BLE001 - the relay must outlive any single failure
                log.exception("relay round failed")
                backoff = min(backoff * 2, 5.0)
            with self.wakeup:
                self.wakeup.wait(timeout=backoff)

    def stop(self) -> None:
        self._stop.set()
        with self.wakeup:
            self.wakeup.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)


def _writable(read_engine: Engine) -> Engine:
    from dualwrite.db import sqlite_engine

    return sqlite_engine(str(read_engine.url))
