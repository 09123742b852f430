"""Failure semantics of the dual-write adapter on real servers (DESIGN-NOTES §4):
a writer killed after its commit, Redis down, the secondary Postgres down, and phase changes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from prometheus_client import REGISTRY
from sqlalchemy import bindparam, create_engine, delete, insert, select, text, update
from sqlalchemy.exc import IntegrityError, StatementError

from dualwrite.adapter import DualWriter
from dualwrite.bookkeeping import outbox
from dualwrite.errors import PhaseError
from dualwrite.events import ChangeEvent
from dualwrite.phase import PhaseStore
from dualwrite.redis_keys import stream_key
from dualwrite.settings import Settings
from dualwrite.stream.relay import Relay
from dualwrite.switch import switch_primary
from dualwrite.testing import prepared_writer
from tests.core.support import both_sides, catalog, items, row, snapshot, stream_events
from tests.servers import PrivatePostgres, PrivateRedis, private_cluster, wait_for

ROOT = Path(__file__).resolve().parents[2]


def outbox_rows(dw: DualWriter, backend: str = "sqlite") -> list[tuple[int, str]]:
    with dw.backends.read_engine(backend).connect() as conn:
        return [tuple(r) for r in conn.execute(select(outbox.c.seq, outbox.c.id).order_by(outbox.c.seq))]  # type: ignore[misc]


def replay_stream(dw: DualWriter, backend: str = "postgres") -> int:
    """Read the whole stream with XRANGE, decode each event and apply them all."""
    raw = dw.backends.redis.xrange(stream_key(dw.settings.namespace))
    events = [ChangeEvent.from_json(fields[b"e"]) for _eid, fields in raw]
    dw.apply(backend, events)
    return len(events)


def secondary_failures() -> float:
    return REGISTRY.get_sample_value("dualwrite_secondary_failures_total", {"store": "toy"}) or 0.0


# -- (a) a writer process killed after its primary commit, before any publish ---------------------------

CHILD = textwrap.dedent(
    """
    import json, sys, time
    sys.path.insert(0, {root!r})
    from sqlalchemy import insert
    from dualwrite.adapter import DualWriter
    from dualwrite.settings import Settings
    from tests.core.support import catalog, items, row

    dw = DualWriter(Settings(**json.loads(sys.argv[1])), catalog())  # no relay in this process

    def killed_here(*_a, **_k):  # the kill point: the primary has committed; nothing applied or published
        print("COMMITTED", flush=True)
        time.sleep(600)

    dw._apply_secondary = killed_here
    dw.execute(insert(items).values([row(1, 1), row(2, 2)]))
    print("NOT REACHED", flush=True)
    """
)


def test_writer_killed_after_commit_loses_nothing(settings: Settings, tmp_path: Path) -> None:
    with prepared_writer(settings, catalog(), phase="dual_write") as dw:
        script = tmp_path / "child.py"
        script.write_text(CHILD.format(root=str(ROOT)))
        args = {k: getattr(settings, k) for k in ("sqlite_url", "postgres_url", "redis_url", "namespace", "pg_schema")}
        proc = subprocess.Popen(
            [sys.executable, str(script), json.dumps(args)], stdout=subprocess.PIPE, text=True, cwd=ROOT
        )
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "COMMITTED"
            os.kill(proc.pid, signal.SIGKILL)
            assert proc.wait(timeout=10) == -signal.SIGKILL
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        # committed on the primary with its outbox rows; not on Postgres; not on the stream
        assert [r[0] for r in snapshot(dw.backends.sqlite_read)] == [1, 2]
        assert [s for s, _ in outbox_rows(dw)] == [1, 2]
        assert snapshot(dw.backends.postgres) == []
        assert dw.backends.redis.exists(stream_key(settings.namespace)) == 0
        # a relay started afterwards publishes both events; replaying them heals Postgres
        dw.start_relay()
        wait_for(lambda: dw.backends.redis.xlen(stream_key(settings.namespace)) == 2, what="the relay to publish")
        assert [(e.seq, e.id) for _, e in stream_events(dw.backends.redis, settings)] == outbox_rows(dw)
        assert replay_stream(dw) == 2
        sqlite_side, pg_side = both_sides(dw)
        assert pg_side == sqlite_side


# -- (b) Redis unreachable: writes succeed, the outbox grows, the backlog drains when Redis is back -------


def test_redis_down_writes_succeed_and_backlog_drains(settings: Settings, private_redis: PrivateRedis) -> None:
    s = settings.with_(redis_url=private_redis.url)
    dw = prepared_writer(s, catalog(), phase="dual_write", relay=True)
    key = stream_key(s.namespace)
    try:
        dw.execute(insert(items).values([row(i, i) for i in range(3)]))
        wait_for(lambda: dw.backends.redis.xlen(key) == 3, what="the first events on the stream")

        private_redis.stop()
        time.sleep(s.phase_cache_seconds + 0.1)  # the phase cache expires: the writer must cope without Redis
        start = time.monotonic()
        dw.execute(insert(items).values([row(i, i) for i in range(3, 6)]))
        dw.execute(update(items).where(items.c.id < 2).values(name="while redis is down"))
        dw.execute(delete(items).where(items.c.id == 5))
        with dw.begin() as tx:
            tx.upsert(items, [row(2, 99), row(7, 7)], ["id"])
        assert time.monotonic() - start < 5
        assert dw.phases.current().name == "dual_write"  # the last phase seen is kept
        sqlite_side, pg_side = both_sides(dw)
        assert pg_side == sqlite_side  # the secondary was still written
        assert len(outbox_rows(dw)) == 3 + 3 + 2 + 1 + 2

        private_redis.start()  # empty: Redis here keeps nothing on disk
        dw.execute(update(items).where(items.c.id == 7).values(name="after"))
        expected = outbox_rows(dw)
        assert len(expected) == 12
        wait_for(
            lambda: dw.backends.redis.exists(key) and dw.backends.redis.xlen(key) == 12, 20, "the backlog to drain"
        )
        assert [(e.seq, e.id) for _, e in stream_events(dw.backends.redis, s)] == expected
    finally:
        dw.close()


# -- (c) the secondary Postgres unreachable: writes succeed, failures counted, replay heals -------------


@pytest.fixture(scope="module")
def private_pg() -> Iterator[PrivatePostgres]:
    with private_cluster() as cluster:
        yield cluster


def test_secondary_down_writes_succeed_and_replay_heals(settings: Settings, private_pg: PrivatePostgres) -> None:
    s = settings.with_(postgres_url=private_pg.url)
    admin = create_engine(private_pg.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{s.pg_schema}"'))
    admin.dispose()
    with prepared_writer(s, catalog(), phase="dual_write", relay=True) as dw:
        dw.execute(insert(items).values([row(i, i) for i in range(4)]))
        sqlite_side, pg_side = both_sides(dw)
        assert pg_side == sqlite_side and len(sqlite_side["items"]) == 4

        private_pg.stop()
        before = secondary_failures()
        dw.execute(insert(items).values([row(i, i) for i in range(4, 7)]))
        dw.execute(update(items).where(items.c.id.in_([0, 5])).values(name="pg was down"))
        dw.execute(delete(items).where(items.c.id == 1))
        with dw.begin() as tx:
            tx.upsert(items, [row(2, 50), row(9, 9)], ["id"])
        assert secondary_failures() == before + 4  # one per failed transaction
        assert [r[0] for r in snapshot(dw.backends.sqlite_read)] == [0, 2, 3, 4, 5, 6, 9]

        private_pg.start()
        sqlite_side, pg_side = both_sides(dw)
        assert pg_side != sqlite_side  # the secondary misses the writes made while it was down
        assert Relay.for_backends(dw.backends).drain(timeout=20)
        assert replay_stream(dw) == len(outbox_rows(dw)) == 4 + 3 + 2 + 1 + 2
        sqlite_side, pg_side = both_sides(dw)
        assert pg_side == sqlite_side
        assert replay_stream(dw) == 12  # a second replay changes nothing
        assert both_sides(dw) == (sqlite_side, pg_side)


# -- (d) phases ------------------------------------------------------------------------------------------


def test_refused_phase_moves_and_history(settings: Settings, rclient: redis.Redis) -> None:
    store = PhaseStore(rclient, settings.namespace)
    assert store.current().name == "sqlite"
    with pytest.raises(
        PhaseError, match=r"refusing to jump from sqlite to shadow: move one phase at a time \(next is dual_write\)"
    ):
        store.set("shadow")
    with pytest.raises(PhaseError, match="unknown phase 'bogus'; phases are: sqlite, dual_write"):
        store.set("bogus")
    store.set("dual_write", reason="step 1", actor="tester")
    store.set("postgres", force=True, reason="forced", actor="tester")
    with pytest.raises(
        PhaseError,
        match="refusing to roll back from postgres to postgres_primary: SQLite has not been written since postgres",
    ):
        store.set("postgres_primary")
    store.set("postgres_primary", force=True)
    store.set("dual_write")  # SQLite is written in postgres_primary: rolling back loses nothing
    store.set("sqlite")
    history = store.history()
    assert [(h["from"], h["to"], h["forced"]) for h in history] == [
        ("sqlite", "dual_write", False),
        ("dual_write", "postgres", True),
        ("postgres", "postgres_primary", True),
        ("postgres_primary", "dual_write", False),
        ("dual_write", "sqlite", False),
    ]
    assert history[0]["by"] == "tester" and history[0]["reason"] == "step 1"


def test_flip_reaches_another_process_within_a_second(settings: Settings) -> None:
    a_client, b_client = redis.Redis.from_url(settings.redis_url), redis.Redis.from_url(settings.redis_url)
    try:
        a = PhaseStore(a_client, settings.namespace, cache_seconds=settings.phase_cache_seconds)
        b = PhaseStore(b_client, settings.namespace, cache_seconds=settings.phase_cache_seconds)
        assert b.current().name == "sqlite"  # b's cache is warm
        start = time.monotonic()
        a.set("dual_write")
        wait_for(lambda: b.current().name == "dual_write", 1.0, "the flip to reach the second store")
        assert time.monotonic() - start < 1.0
    finally:
        a_client.close()
        b_client.close()


def test_primary_switch_continues_seq_above_sqlite(settings: Settings) -> None:
    dw = prepared_writer(settings, catalog(), phase="dual_write")
    stale = DualWriter(settings, catalog())
    try:
        dw.execute(insert(items).values([row(i, i) for i in range(3)]))
        dw.execute(update(items).where(items.c.id == 0).values(name="x"))
        last_sqlite = outbox_rows(dw)[-1][0]
        assert last_sqlite == 4
        assert stale.phases.current().primary == "sqlite"
        stale.phases.cache_seconds = 3600  # this writer will not notice the flip by itself
        for target in ("shadow", "postgres_reads", "postgres_primary"):
            dw.phases.set(target)
        assert switch_primary(dw.backends, dw.tables, "postgres") == last_sqlite

        dw.execute(insert(items).values(row(10, 10)))
        stale.execute(update(items).where(items.c.id == 10).values(name="from a stale writer"))  # fenced, retried
        assert stale.phases.current().primary == "postgres"
        pg_out = outbox_rows(dw, "postgres")
        assert [s for s, _ in pg_out] == [last_sqlite + 1, last_sqlite + 2]
        assert [s for s, _ in outbox_rows(dw)] == [1, 2, 3, 4]  # nothing more on the retired primary
        sqlite_side, pg_side = both_sides(dw)
        assert pg_side == sqlite_side  # SQLite is now the secondary, still written
        assert Relay.for_backends(dw.backends).drain(timeout=20)
        assert [e.seq for _, e in stream_events(dw.backends.redis, settings)] == [1, 2, 3, 4, 5, 6]
    finally:
        stale.close()
        dw.close()


# -- the primary fails: the write fails with the database's error and nothing is recorded ---------------


def test_primary_failure_records_nothing(settings: Settings) -> None:
    with prepared_writer(settings, catalog(), phase="dual_write") as dw:
        dw.execute(insert(items).values(row(1, 1)))
        before = (both_sides(dw), outbox_rows(dw))
        with pytest.raises(IntegrityError):
            dw.execute(insert(items).values([row(2, 2), row(1, 1)]))  # the second row collides
        with pytest.raises(RuntimeError, match="application bug"), dw.begin() as tx:
            tx.execute(update(items).values(name="never"))
            raise RuntimeError("application bug")
        assert (both_sides(dw), outbox_rows(dw)) == before
        # executemany UPDATE/DELETE cannot return row images: refused loudly, never silently uncaptured
        with pytest.raises(StatementError, match="RETURNING"):
            dw.execute(update(items).where(items.c.id == bindparam("k")).values(name="x"), [{"k": 1}, {"k": 2}])
        assert (both_sides(dw), outbox_rows(dw)) == before
