"""Chunked copy on the real servers: equality, live writes during the copy, deletes, resume, rejects."""

from __future__ import annotations

import json
import threading

import pytest
from sqlalchemy import delete, insert, select, text, update

from dualwrite.backfill import checkpoint as ckpt
from dualwrite.backfill.copier import Copier, copy_apply
from dualwrite.backfill.cursor import read_chunk
from dualwrite.backfill.rejects import RejectWriter
from dualwrite.stream.replay import Replayer
from tests.backfill.support import TABLES, accounts, assert_equal, drain_relay, notes, seed, tags

PHASE = "dual_write"  # the conftest's dw fixture


@pytest.mark.parametrize("fast", [True, False])
def test_copy_makes_postgres_equal(dw, fast) -> None:  # type: ignore[no-untyped-def]
    seed(dw, 257)
    copier = Copier.for_backends(dw.backends, chunk_size=50, fast=fast)
    reports = copier.copy_tables(TABLES)
    assert [r.status for r in reports] == ["done"] * 3
    assert [r.rows_copied for r in reports] == [257] * 3
    assert_equal(dw)
    # A second run is a no-op (checkpoints say done); after reset it copies again and changes nothing.
    assert all(r.chunks == 0 for r in copier.copy_tables(TABLES))
    ckpt.reset(dw.backends.postgres)
    again = copier.copy_tables(TABLES)
    assert sum(r.rows_applied for r in again) == 0 and sum(r.rows_stale for r in again) == 3 * 257
    assert_equal(dw)


def test_composite_text_keys_paginate(dw) -> None:  # type: ignore[no-untyped-def]
    with dw.backends.sqlite.begin() as conn:
        rows = [{"tenant": t, "n": n, "label": "x"} for t in ("a", "B", "é", "a b") for n in (3, 1, 2)]
        conn.execute(insert(tags), rows)
    copier = Copier.for_backends(dw.backends, chunk_size=2)
    (rep,) = copier.copy_tables([tags])
    assert rep.rows_copied == 12 and rep.chunks == 7  # 6 full chunks + the empty one that ends it
    assert_equal(dw)


def test_live_update_after_chunk_read_wins(dw) -> None:  # type: ignore[no-untyped-def]
    seed(dw, 10)
    chunk = read_chunk(dw.backends.sqlite_read, accounts, None, 100)
    # After the chunk was read: a live update and a live delete go through the DualWriter (seq > S).
    dw.execute(update(accounts).where(accounts.c.id == 3).values(name="live"))
    dw.execute(delete(notes).where(notes.c.account_id == 4))
    dw.execute(delete(accounts).where(accounts.c.id == 4))
    with dw.backends.postgres_apply.begin() as conn:
        res = copy_apply(conn, accounts, chunk.rows, chunk.version)
    assert res.applied == 8 and res.stale == 2
    with dw.backends.postgres.connect() as conn:
        assert conn.execute(select(accounts.c.name).where(accounts.c.id == 3)).scalar() == "live"
        assert conn.execute(select(accounts.c.id).where(accounts.c.id == 4)).first() is None
    with dw.backends.postgres_apply.begin() as conn:  # the slow path agrees
        res = copier_slow_apply(conn, chunk)
    assert res.applied == 0
    assert_equal_table(dw, accounts)


def copier_slow_apply(conn, chunk):  # type: ignore[no-untyped-def]
    from dualwrite.apply.rule import apply_snapshot_rows

    return apply_snapshot_rows(conn, accounts, chunk.rows, chunk.version)


def assert_equal_table(dw, table) -> None:  # type: ignore[no-untyped-def]
    from tests.backfill.support import snapshot

    assert snapshot(dw.backends.sqlite_read, table) == snapshot(dw.backends.postgres, table)


def test_copy_with_concurrent_writers_then_replay(dw) -> None:  # type: ignore[no-untyped-def]
    seed(dw, 400)
    replayer = Replayer(dw.backends, dw.tables, consumer="c1", block_ms=50)
    replayer.ensure_group()
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer(tid: int) -> None:
        i = 0
        try:
            while not stop.is_set():
                i += 1
                k = 1 + (i * 37 + tid * 11) % 400
                dw.execute(update(accounts).where(accounts.c.id == k).values(name=f"w{i}"))
                dw.execute(update(notes).where(notes.c.id == k).values(body=f"b{i}"))
                if i % 5 == 0:
                    dw.execute(delete(tags).where(tags.c.n == k))
                if i % 7 == 0:
                    dw.execute(insert(notes).values(id=1000 + tid * 100_000 + i, account_id=k, body="new"))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(2)]
    for t in threads:
        t.start()
    copier = Copier.for_backends(dw.backends, chunk_size=20)
    copier.copy_tables(TABLES)
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors
    drain_relay(dw)
    replayer.run(once=True)
    assert_equal(dw)


def test_resume_after_crash(dw) -> None:  # type: ignore[no-untyped-def]
    seed(dw, 230)
    first = Copier.for_backends(dw.backends, chunk_size=40)
    first.copy_tables(TABLES, max_chunks=4)  # "killed" after 4 chunks: 160 rows of accounts
    cps = ckpt.load_all(dw.backends.postgres)
    assert cps["bf_accounts"].rows_copied == 160 and cps["bf_accounts"].status == "copying"
    with dw.backends.postgres.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM bf_accounts")).scalar() == 160
    second = Copier.for_backends(dw.backends, chunk_size=40)
    reports = second.copy_tables(TABLES)
    assert [r.rows_copied for r in reports] == [230, 230, 230]
    assert reports[0].rows_applied == 70  # nothing copied twice
    assert_equal(dw)


@pytest.mark.parametrize("fast", [True, False])
def test_bad_rows_go_to_reject_file(dw, tmp_path, fast) -> None:  # type: ignore[no-untyped-def]
    seed(dw, 100)
    with dw.backends.sqlite.begin() as conn:
        for k in (7, 55, 56, 99):
            conn.execute(update(notes).where(notes.c.id == k).values(body=f"bad\x00{k}"))
    path = tmp_path / "rejects.jsonl"
    copier = Copier.for_backends(dw.backends, chunk_size=32, rejects=RejectWriter(path), fast=fast)
    reports = copier.copy_tables(TABLES)
    assert reports[2].rows_rejected == 4 and reports[2].rows_copied == 96
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert sorted(json.loads(r["key"])[0] for r in lines) == [7, 55, 56, 99]
    assert {r["column"] for r in lines} == {"body"} and all(r["table"] == "bf_notes" for r in lines)
    assert all("\\x00" in r["value"] for r in lines)
    with dw.backends.postgres.connect() as conn:
        ids = set(conn.execute(select(notes.c.id)).scalars())
    assert ids == set(range(1, 101)) - {7, 55, 56, 99}
    assert ckpt.load_all(dw.backends.postgres)["bf_notes"].rows_rejected == 4


def test_serial_sequence_moves_past_copied_ids(dw) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import Column, Integer, MetaData, Table, Text

    md2 = MetaData()
    serial = Table("bf_serial", md2, Column("id", Integer, primary_key=True), Column("v", Text))
    md2.create_all(dw.backends.sqlite)
    md2.create_all(dw.backends.postgres)
    with dw.backends.sqlite.begin() as conn:
        conn.execute(insert(serial), [{"id": i, "v": str(i)} for i in (1, 2, 50)])
    Copier.for_backends(dw.backends, chunk_size=2).copy_tables([serial])
    with dw.backends.postgres.begin() as conn:
        assert conn.execute(insert(serial).values(v="pg").returning(serial.c.id)).scalar() == 51


def test_throttle_limits_rate(dw) -> None:  # type: ignore[no-untyped-def]
    import time

    from dualwrite.backfill.throttle import TokenBucket

    seed(dw, 60)
    copier = Copier.for_backends(dw.backends, chunk_size=10, throttle=TokenBucket(40))
    t = time.monotonic()
    copier.copy_tables([accounts])
    assert time.monotonic() - t >= 0.4  # 60 rows at 40/s, 40 of burst: 20 rows wait 0.5 s


def test_schema_mismatch_stops_instead_of_rejecting(dw, tmp_path) -> None:  # type: ignore[no-untyped-def]
    seed(dw, 10)
    with dw.backends.postgres.begin() as conn:
        conn.execute(text("ALTER TABLE bf_tags DROP COLUMN label"))
    path = tmp_path / "rejects.jsonl"
    copier = Copier.for_backends(dw.backends, chunk_size=4, rejects=RejectWriter(path))
    with pytest.raises(Exception, match="label"):
        copier.copy_tables([tags])
    assert not path.exists()
    assert ckpt.load_all(dw.backends.postgres).get("bf_tags") is None  # nothing committed: resumes from the start
