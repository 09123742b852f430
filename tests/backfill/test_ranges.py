"""Chunk range versions (apply/ranges.py, backfill/spans.py): a copied chunk records one version for its
key range instead of a version row per key, and the apply rule reads the greater of a key's own version
and the ranges covering it. Live writes before, after and during a chunk, deletes before and after S,
and re-runs, on both drivers; the hypothesis interleavings run the same path (test_interleavings.py)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine, delete, text, update

from dualwrite.apply.rule import apply_events
from dualwrite.backfill import checkpoint as ckpt
from dualwrite.backfill.copier import Copier
from dualwrite.backfill.cursor import read_chunk
from dualwrite.backfill.spans import load_span
from tests.backfill.support import Race, accounts, names, seed_sqlite, upsert, versions
from tests.backfill.support import delete as delete_event


def ranges(engine: Engine) -> list[tuple[str, int]]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT span::text, seq FROM _dw_ranges WHERE tbl = 'bf_accounts' ORDER BY span"))
        out = [(str(s), int(v)) for s, v in rows]
        conn.rollback()
    return out


def copy_span(engine: Engine, chunk: Any) -> Any:
    with engine.begin() as conn:
        return load_span(conn, accounts, chunk.columns, chunk.values, chunk.version, chunk.span)


def live(dw, *events) -> Any:  # type: ignore[no-untyped-def]
    with dw.backends.postgres_apply.begin() as conn:
        return apply_events(conn, dw.tables.table, list(events))


def test_a_copy_writes_one_range_version_per_chunk_and_no_version_rows(dw) -> None:  # type: ignore[no-untyped-def]
    seed_sqlite(dw, 25)
    copier = Copier.for_backends(dw.backends, chunk_size=10)
    (rep,) = copier.copy_tables([accounts])
    assert (rep.rows_copied, rep.rows_applied, rep.status) == (25, 25, "done")
    assert versions(dw.backends.postgres) == {}
    assert ranges(dw.backends.postgres) == [("(,11)", 100), ("[11,21)", 100), ("[21,)", 100)]
    ckpt.reset(dw.backends.postgres)
    (again,) = copier.copy_tables([accounts])  # the same S: every row is a no-op, nothing is rewritten
    assert (again.rows_applied, again.rows_stale) == (0, 25)
    assert len(ranges(dw.backends.postgres)) == 3 and len(names(dw.backends.postgres)) == 25


def test_a_rerun_at_a_newer_version_makes_its_span_equal_the_source(dw) -> None:  # type: ignore[no-untyped-def]
    """Rows changed or deleted in SQLite with no event reaching Postgres (a re-run after a lost stream):
    the newer chunk rewrites its span, deleting the rows it no longer finds; its range replaces the old."""
    seed_sqlite(dw, 20)
    Copier.for_backends(dw.backends, chunk_size=50).copy_tables([accounts])
    with dw.backends.sqlite.begin() as conn:
        conn.execute(update(accounts).where(accounts.c.id == 4).values(name="changed"))
        conn.execute(delete(accounts).where(accounts.c.id.in_([5, 6])))
        conn.execute(text("UPDATE _dw_meta SET value = 200 WHERE name = 'last_seq'"))
    ckpt.reset(dw.backends.postgres)
    (rep,) = Copier.for_backends(dw.backends, chunk_size=50).copy_tables([accounts])
    assert rep.rows_applied == 18
    got = names(dw.backends.postgres)
    assert got[4] == "changed" and 5 not in got and 6 not in got and len(got) == 18
    assert ranges(dw.backends.postgres) == [("(,)", 200)]
    assert live(dw, upsert(5, 150, "late")).applied == 0  # older than the range: stale, not resurrected


# (event, applied before or after the chunk) -> the name key 10 ends with (None: no row)
@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize(
    "event, expected",
    [
        (upsert(10, 101, "live"), "live"),  # after S: the log wins
        (upsert(10, 99, "old"), "acct-10 é"),  # before S: the chunk reflects it already
        (delete_event(10, 102), None),  # deleted after S: never resurrected
    ],
    ids=["newer-image", "older-image", "newer-delete"],
)
def test_a_live_write_before_or_after_its_chunk(dw, copier_pg, event, expected, when) -> None:  # type: ignore[no-untyped-def]
    seed_sqlite(dw, 20)
    chunk = read_chunk(dw.backends.sqlite_read, accounts, None, 100)
    if when == "before":
        live(dw, event)
    result = copy_span(copier_pg, chunk)
    if when == "after":
        assert live(dw, event).applied == (1 if event.seq > 100 else 0)
    assert names(dw.backends.postgres).get(10) == expected and len(names(dw.backends.postgres)) == 20 - (
        expected is None
    )
    if when == "before":
        assert result.stale == (1 if event.seq > 100 else 0)
    live(dw, event)  # a duplicate changes nothing
    assert names(dw.backends.postgres).get(10) == expected


def test_a_key_deleted_before_s_whose_delete_is_late(dw, copier_pg) -> None:  # type: ignore[no-untyped-def]
    """Key 10 reached Postgres (seq 98), was deleted (seq 99) before the chunk's S; that delete is still in
    the stream when the chunk lands: the chunk deletes the row (its span at S has no key 10), and the late
    delete and a replayed old image are stale."""
    seed_sqlite(dw, 20)
    with dw.backends.sqlite.begin() as conn:
        conn.execute(delete(accounts).where(accounts.c.id == 10))
    live(dw, upsert(10, 98, "early"))
    copy_span(copier_pg, read_chunk(dw.backends.sqlite_read, accounts, None, 100))
    assert 10 not in names(dw.backends.postgres)
    assert live(dw, delete_event(10, 99), upsert(10, 98, "early")).applied == 0
    assert 10 not in names(dw.backends.postgres) and len(names(dw.backends.postgres)) == 19


def test_a_live_insert_after_s_beyond_the_last_chunk_stays(dw, copier_pg) -> None:  # type: ignore[no-untyped-def]
    """The last chunk's range is open-ended; a key inserted after S (its own version newer) is kept."""
    seed_sqlite(dw, 20)
    live(dw, upsert(500, 101, "new"))
    copy_span(copier_pg, read_chunk(dw.backends.sqlite_read, accounts, None, 100))
    assert names(dw.backends.postgres)[500] == "new" and len(names(dw.backends.postgres)) == 21


@pytest.mark.parametrize("seq, applied", [(99, 0), (101, 1)])
def test_a_live_apply_waits_for_an_uncommitted_chunk(dw, copier_pg, seq, applied) -> None:  # type: ignore[no-untyped-def]
    """The chunk holds its table's range lock until it commits: a live apply of a key in its span waits,
    then sees the range (an older image stale, a newer one applied)."""
    seed_sqlite(dw, 20)
    chunk = read_chunk(dw.backends.sqlite_read, accounts, None, 100)
    race = Race()

    def copy() -> Any:
        with dw.backends.postgres_apply.begin() as conn:
            res = load_span(conn, accounts, chunk.columns, chunk.values, chunk.version, chunk.span)
            race.hold()
        return res

    def apply_live() -> Any:
        with copier_pg.begin() as conn:  # the live apply on each driver
            race.waiting(conn)
            return apply_events(conn, dw.tables.table, [upsert(10, seq, "live")])

    copy_out, live_out = race.run(dw, copy, apply_live)
    assert copy_out[0].applied == 20 and live_out[0].applied == applied
    assert names(dw.backends.postgres)[10] == ("live" if applied else "acct-10 é")


def test_a_chunk_waits_for_an_uncommitted_live_apply(dw, copier_pg) -> None:  # type: ignore[no-untyped-def]
    """A live apply (newer than S) holds the shared lock uncommitted: the chunk waits for it, then keeps
    its row (the key's own version is newer)."""
    seed_sqlite(dw, 20)
    chunk = read_chunk(dw.backends.sqlite_read, accounts, None, 100)
    race = Race()

    def apply_live() -> None:
        with dw.backends.postgres_apply.begin() as conn:
            apply_events(conn, dw.tables.table, [upsert(10, 101, "live")])
            race.hold()

    def copy() -> Any:
        with copier_pg.begin() as conn:
            race.waiting(conn)
            return load_span(conn, accounts, chunk.columns, chunk.values, chunk.version, chunk.span)

    live_out, copy_out = race.run(dw, apply_live, copy)
    assert live_out == [None] and (copy_out[0].applied, copy_out[0].stale) == (19, 1)
    assert names(dw.backends.postgres)[10] == "live"


def test_the_inline_dual_write_takes_the_lock_in_its_own_round_trip(dw) -> None:  # type: ignore[no-untyped-def]
    """The autocommit one-statement apply (run_plan_direct) on a ranged table: still one statement on
    psycopg2, and it honours the range (an image older than the copy is stale)."""
    from dualwrite.apply.rule import plan_events, run_plan_direct

    seed_sqlite(dw, 5)
    Copier.for_backends(dw.backends).copy_tables([accounts])
    engine = dw.backends.postgres_direct
    plan = plan_events(engine, dw.tables.table, [upsert(3, 50, "old")])
    assert run_plan_direct(engine, plan).applied == 0
    plan = plan_events(engine, dw.tables.table, [upsert(3, 150, "new")])
    assert run_plan_direct(engine, plan).applied == 1
    assert names(dw.backends.postgres)[3] == "new"

