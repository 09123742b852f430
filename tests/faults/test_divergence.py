"""No silent divergence (issue 14), as fault cases with figures for reports/reliability.md: a 70 MB row, a
unique swap, an old image of a key deleted before the copy, Redis restarted empty in postgres_primary,
strict mode with Postgres stopped, a Postgres whose TimeZone is America/New_York, a SIGKILLed backfill
worker in `backfill status`, and random ORM sessions with cascades."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from prometheus_client import REGISTRY
from sqlalchemy import (
    Column,
    DateTime,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    create_engine,
    delete,
    insert,
    select,
    text,
    update,
)

from dualwrite.adapter import DualWriter
from dualwrite.apply.rule import apply_events
from dualwrite.backfill.copier import Copier
from dualwrite.bookkeeping import outbox
from dualwrite.cli.main import main
from dualwrite.errors import EventTooLargeError, SecondaryApplyError
from dualwrite.events import ChangeEvent
from dualwrite.settings import Settings
from dualwrite.stream.relay import Relay
from dualwrite.stream.replay import Replayer
from dualwrite.tables import Tables
from dualwrite.testing import prepared_writer
from tests.conftest import connection_args, database_in_timezone
from tests.core.support import TABLES, catalog, items, row
from tests.faults.conftest import SEEDS, Collector, PrivatePostgres, PrivateRedis, heal_and_verify

md = MetaData()
# this module's own tables: shaped like other suites' Table declarations; other names and types on purpose
users = Table(
    "dv_users",
    md,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("email", String(60), unique=True),
    Column("name", String(40)),
)
blobs = Table(
    "dv_blobs",
    md,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("data", LargeBinary),
)
stamps = Table(
    "dv_stamps",
    md,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("at", DateTime(timezone=True)),
)


def _failures(store: str) -> float:
    return REGISTRY.get_sample_value("dualwrite_secondary_failures_total", {"store": store}) or 0.0


def _rows(engine, table: Table) -> list[tuple]:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(table).order_by(*table.primary_key.columns))]


def _outbox_len(dw: DualWriter, side: str = "sqlite") -> int:
    with dw.backends.read_engine(side).connect() as conn:
        return int(conn.execute(select(text("count(*)")).select_from(outbox)).scalar())


# -- a row over the size limit -----------------------------------------------------------------------
def test_a_70mb_row_is_refused_never_dead_lettered(settings: Settings, collector: Collector) -> None:
    with prepared_writer(settings, Tables.of(md, store="dv"), phase="dual_write", relay=True) as dw:
        dw.execute(insert(blobs).values(id=1, data=b"small"))
        big = os.urandom(70 * 1024 * 1024)
        t0 = time.monotonic()
        with pytest.raises(EventTooLargeError, match=r"table 'dv_blobs' row \(id=2\): its change event is 9"):
            dw.execute(insert(blobs).values(id=2, data=big))
        with pytest.raises(EventTooLargeError):
            dw.execute(update(blobs).where(blobs.c.id == 1).values(data=big))
        refused_s = time.monotonic() - t0
        del big
        assert _rows(dw.backends.sqlite_read, blobs) == _rows(dw.backends.postgres, blobs) == [(1, b"small")]
        assert _outbox_len(dw) == 1  # nothing of the refused writes was committed
        out = heal_and_verify(dw, [blobs], since=time.monotonic())
        collector.healed(
            "a 70 MB row (event over MAX_EVENT_BYTES)",
            out,
            rows_during_fault=2,
            diverged_before=0,
            note=f"insert and update refused on the primary in {refused_s:.1f} s (EventTooLargeError); "
            f"nothing committed; {out.dead_letters} dead letters",
        )


# -- unique constraints -------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", SEEDS)
def test_unique_swaps_apply_inline(settings: Settings, collector: Collector, seed: int) -> None:
    rng = random.Random(seed)
    with prepared_writer(settings, Tables.of(md, store="dv"), phase="dual_write", relay=True) as dw:
        n = 12
        dw.execute(insert(users).values([{"id": i, "email": f"u{i}@x", "name": f"n{i}"} for i in range(n)]))
        failures, swaps, behind = _failures("dv"), 0, 0
        t0 = time.monotonic()
        for _ in range(40):
            a, b = rng.sample(range(n), 2)
            with dw.begin() as tx:
                cur = {r.id: r.email for r in tx.connection.execute(select(users).where(users.c.id.in_([a, b])))}
                tx.execute(update(users).where(users.c.id == a).values(email=f"tmp{a}"))
                tx.execute(update(users).where(users.c.id == b).values(email=cur[a]))
                tx.execute(update(users).where(users.c.id == a).values(email=cur[b]))
            swaps += 1
            behind += _rows(dw.backends.sqlite_read, users) != _rows(dw.backends.postgres, users)
        assert behind == 0 and _failures("dv") == failures  # every swap applied inline, before any replay
        out = heal_and_verify(dw, [users], since=t0)
        collector.healed(
            "unique swap inside one transaction",
            out,
            rows_during_fault=3 * swaps,
            diverged_before=behind,
            note=f"{swaps}/{swaps} swaps applied inline (0 secondary failures); {out.dead_letters} dead letters",
        )


def _deleted_before_copy(dw: DualWriter, rng: random.Random, keys: int) -> tuple[int, int]:
    """Phase sqlite (events captured, nothing applied): keys take and give up e-mails, some are deleted, and
    a freed e-mail goes to another key; then the copy, then the stream replayed in batches of random size
    (old images of keys deleted before the copy, whose claims win, collide with newer rows). Returns
    (events written, collisions the old images met)."""
    for i in range(keys):
        dw.execute(insert(users).values(id=i, email=f"e{i}", name="first"))
    alive = set(range(keys))
    for _ in range(keys * 2):
        k = rng.choice(sorted(alive))
        if rng.random() < 0.4 and len(alive) > 2:
            email = dw.execute(delete(users).where(users.c.id == k))[0]["email"]
            alive.discard(k)
            heir = keys + rng.randrange(10**6)
            dw.execute(insert(users).values(id=heir, email=email, name="heir"))  # the freed value, reused
            alive.add(heir)
        else:
            dw.execute(update(users).where(users.c.id == k).values(name=f"n{rng.randrange(100)}"))
    Copier.for_backends(dw.backends, chunk_size=rng.choice([3, 7, 50])).copy_tables([users])
    assert Relay.for_backends(dw.backends).drain(timeout=20)
    with dw.backends.sqlite_read.connect() as conn:
        events = [ChangeEvent.from_json(r.payload) for r in conn.execute(outbox.select().order_by(outbox.c.seq))]
    collisions = 0
    with dw.backends.postgres.connect() as conn:
        taken = {r.email: r.id for r in conn.execute(select(users))}
    for ev in events:
        if ev.op == "upsert" and taken.get(ev.image["email"], ev.key["id"]) != ev.key["id"]:  # type: ignore[index]
            collisions += 1
    rp = Replayer(dw.backends, dw.tables, consumer="late", batch=rng.choice([1, 2, 5]), block_ms=50)
    rp.run(once=True)
    return len(events), collisions


@pytest.mark.parametrize("seed", SEEDS)
def test_old_images_of_keys_deleted_before_the_copy_converge(
    settings: Settings, collector: Collector, seed: int
) -> None:
    with prepared_writer(settings, Tables.of(md, store="dv"), phase="sqlite") as dw:
        t0 = time.monotonic()
        written, collisions = _deleted_before_copy(dw, random.Random(seed), 10)
        assert collisions > 0, "no old image met a newer row: the case did not happen"
        dw.phases.set("dual_write", force=True, reason="test")
        out = heal_and_verify(dw, [users], since=t0)
        assert out.dead_letters == 0
        collector.healed(
            "old image of a key deleted before the copy (unique collision)",
            out,
            rows_during_fault=written,
            diverged_before=0,
            note=f"{collisions} old images collided with newer rows: stale, {out.dead_letters} dead letters",
        )


def test_an_old_image_never_resurrects_a_key_deleted_before_the_copy(settings: Settings) -> None:
    """The chunk's version must cover the absence of a key too: an image older than the copy of a key the
    copy did not find is stale, even before the key's own delete event is replayed (today it comes back
    until then): the copy's range version covers the keys it did not find."""
    with prepared_writer(settings, Tables.of(md, store="dv"), phase="sqlite") as dw:
        dw.execute(insert(users).values(id=1, email="a", name="old"))
        dw.execute(delete(users).where(users.c.id == 1))
        dw.execute(insert(users).values(id=2, email="b", name="kept"))
        Copier.for_backends(dw.backends).copy_tables([users])
        with dw.backends.sqlite_read.connect() as conn:
            first = ChangeEvent.from_json(conn.execute(outbox.select().order_by(outbox.c.seq)).first().payload)
        with dw.backends.postgres_apply.begin() as conn:
            apply_events(conn, dw.tables.table, [first])  # its delete (seq 2) not delivered yet
        assert [r[0] for r in _rows(dw.backends.postgres, users)] == [2]


# -- the phase survives Redis --------------------------------------------------------------------------
def test_redis_restarted_empty_in_postgres_primary(
    fsettings: Settings, private_redis: PrivateRedis, collector: Collector
) -> None:
    with prepared_writer(fsettings, catalog(), phase="postgres_primary", relay=True) as dw:
        dw.execute(insert(items).values([row(i, i) for i in range(5)]))
        private_redis.stop()
        private_redis.start()  # empty
        t0 = time.monotonic()
        res = CliRunner().invoke(main, ["status", *connection_args(fsettings)])
        assert "phase: postgres_primary" in res.output, res.output
        fresh = DualWriter(fsettings, catalog())
        try:
            lite_before = _outbox_len(dw, "sqlite")
            fresh.execute(insert(items).values([row(i, i) for i in range(5, 10)]))  # a new instance's first write
            assert fresh.phases.current().primary == "postgres" and _outbox_len(dw, "sqlite") == lite_before
        finally:
            fresh.close()
        out = heal_and_verify(dw, TABLES, since=t0)
        # each fault records its own row through the shared collector.healed: alike in shape, other facts
        collector.healed(
            "Redis restarted empty in postgres_primary",
            out,
            rows_during_fault=5,
            note="CLI and a new instance read postgres_primary from the record; the first write went to Postgres",
        )


# -- strict mode ----------------------------------------------------------------------------------------
def test_strict_with_postgres_stopped_commits_nothing(
    fsettings: Settings, pg: PrivatePostgres, collector: Collector
) -> None:
    with prepared_writer(fsettings.with_(strict=True), catalog(), phase="dual_write", relay=True) as dw:
        dw.execute(insert(items).values([row(i, i) for i in range(3)]))
        before = (_rows(dw.backends.sqlite_read, items), _outbox_len(dw))
        pg.stop()
        refused = 0
        for i in range(3, 8):
            with pytest.raises(SecondaryApplyError, match="nothing committed"):
                dw.execute(insert(items).values(row(i, i)))
            refused += 1
        assert (_rows(dw.backends.sqlite_read, items), _outbox_len(dw)) == before
        pg.start()
        t0 = time.monotonic()
        for i in range(3, 8):  # the application's retries: each written once
            dw.execute(insert(items).values(row(i, i)))
        out = heal_and_verify(dw, TABLES, since=t0)
        assert [r[0] for r in _rows(dw.backends.postgres, items)] == list(range(8))
        collector.healed(
            "strict mode, Postgres stopped",
            out,
            rows_during_fault=refused,
            diverged_before=0,
            note=f"{refused}/{refused} writes raised SecondaryApplyError before the primary committed; "
            "retries wrote each row once",
        )


# -- time zones -----------------------------------------------------------------------------------------
def test_a_new_york_postgres_shifts_no_timestamp(settings: Settings, collector: Collector) -> None:
    with database_in_timezone("America/New_York") as url:
        admin = create_engine(url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{settings.pg_schema}"'))
        admin.dispose()
        s = settings.with_(postgres_url=url)
        with prepared_writer(s, Tables.of(md, store="dv"), phase="sqlite", relay=True) as dw:
            base = datetime(2026, 11, 1, 5, 30, tzinfo=UTC)  # New York's DST ends at 06:00 UTC that day
            at = {i: base + timedelta(minutes=7 * i, microseconds=i) for i in range(120)}
            dw.execute(insert(stamps).values([{"id": i, "at": at[i].replace(tzinfo=None)} for i in range(60)]))
            dw.phases.set("dual_write", force=True, reason="test")
            dw.execute(insert(stamps).values([{"id": i, "at": at[i]} for i in range(60, 120)]))
            Copier.for_backends(dw.backends).copy_tables([stamps])
            t0 = time.monotonic()
            out = heal_and_verify(dw, [stamps], since=t0)
            shifted = sum(pg_at != at[i] for i, pg_at in _rows(dw.backends.postgres, stamps))
            assert shifted == 0
            collector.case(
                "Postgres TimeZone America/New_York (history + live + COPY)",
                rows_during_fault=len(at),
                rows_lost=out.missing,
                rows_diverged=out.differing + out.extra + shifted,
                recovery_seconds=out.seconds,
                note=f"{shifted} timestamps shifted (equal to the microsecond); verify clean",
            )


# -- backfill status after a SIGKILL ---------------------------------------------------------------------
def test_backfill_status_after_a_sigkill(settings: Settings, collector: Collector, tmp_path: Path) -> None:
    with prepared_writer(settings, catalog(), phase="sqlite") as dw:
        with dw.backends.sqlite.begin() as conn:
            conn.execute(insert(items), [row(i, i) for i in range(400)])
        proc = subprocess.Popen(
            [sys.executable, "-m", "dualwrite", "backfill", "run", *connection_args(settings), "--metadata",
             "tests.core.support:md", "--no-replay", "--chunk-size", "10", "--max-rows-per-second", "40",
             "--rejects", str(tmp_path / "r.jsonl")],
            env=dict(os.environ, PYTHONPATH=os.getcwd()), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while "copying" not in (out := CliRunner().invoke(main, ["backfill", "status", *_meta(settings)]).output):
                assert time.monotonic() < deadline, out
                time.sleep(0.2)
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        t0 = time.monotonic()
        while "copying" in (out := CliRunner().invoke(main, ["backfill", "status", *_meta(settings)]).output):
            assert time.monotonic() - t0 < 10, out
            time.sleep(0.1)
        seen = time.monotonic() - t0
        assert "stopped" in out and "workers: none running" in out
        collector.case(
            "backfill worker SIGKILLed: `backfill status`",
            rows_during_fault=0,
            rows_lost=0,
            rows_diverged=0,
            recovery_seconds=seen,
            note=f"listed as stopped {seen:.1f} s after the kill (its published state lives 30 s)",
        )


def _meta(settings: Settings) -> list[str]:
    return [*connection_args(settings), "--metadata", "tests.core.support:md"]


# -- ORM sessions ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", SEEDS)
def test_random_orm_sessions_with_cascades(settings: Settings, collector: Collector, seed: int) -> None:
    from tests.core.orm_model import TABLES as ORM_TABLES
    from tests.core.orm_model import catalog as orm_catalog
    from tests.core.orm_model import sides
    from tests.core.test_orm_convergence import OPS, Log, SeededDraws, step

    rng = random.Random(seed)
    with prepared_writer(settings, orm_catalog(), phase="dual_write", relay=True) as dw:
        log, ops = Log(), 0
        t0 = time.monotonic()
        for _ in range(30):
            with dw.session() as s:
                for _ in range(rng.randrange(1, 8)):
                    step(rng.choice(OPS), s, log, SeededDraws(rng))
                    ops += 1
        lite, pg = sides(dw)
        assert lite == pg == log.tables()
        out = heal_and_verify(dw, ORM_TABLES, since=t0)
        collector.healed(
            "random ORM sessions (delete-orphan, passive_deletes, many-to-many, self-reference)",
            out,
            rows_during_fault=ops,
            diverged_before=0,
            note=f"30 sessions, {ops} operations; SQLite, Postgres and the log of intended changes agree",
        )
