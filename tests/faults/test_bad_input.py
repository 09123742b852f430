"""Bad input on the change stream: malformed, truncated, oversized, replayed and unknown-table entries are
dead-lettered with a reason (or are no-ops) and the replayer never dies; hostile table/column names and
SQL in values survive the round trip."""

from __future__ import annotations

import json
import time

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, insert, select, update

import dualwrite.events as events_mod
from dualwrite.events import ChangeEvent
from dualwrite.redis_keys import dead_letter_key, stream_key
from dualwrite.settings import Settings
from dualwrite.stream.relay import Relay
from dualwrite.stream.replay import Replayer, list_dead_letters
from dualwrite.tables import Tables
from dualwrite.testing import prepared_writer
from dualwrite.verify.verifier import verify_tables
from tests.core.support import TABLES, catalog, items, row
from tests.faults.conftest import SEEDS, Collector, PrivatePostgres, heal_and_verify
from tests.faults.workload import running_workload

HOSTILE = "'); DROP TABLE items;--"


def _good_event(i: int, seq: int = 1) -> ChangeEvent:
    return ChangeEvent("items", "upsert", {"id": i}, row(i, i), seq=seq)


def _bad_entries(seed: int) -> dict[str, dict[str, bytes]]:
    good = _good_event(900 + seed).to_json().encode()
    doc = json.loads(good)
    return {
        "malformed JSON": {"e": b"{not json at all"},
        "truncated event": {"e": good[: len(good) // 2]},
        "oversized event (> MAX_EVENT_BYTES)": {"e": b'{"v": 1, "pad": "' + b"x" * 70_000 + b'"}'},
        "entry without the event field": {"x": b"1"},
        "not UTF-8": {"e": b"\xff\xfe\x00garbage"},
        "JSON that is not an object": {"e": b"[1, 2, 3]"},
        "unknown format version": {"e": json.dumps({**doc, "v": 99}).encode()},
        "unknown op": {"e": json.dumps({**doc, "op": "truncate"}).encode()},
        "negative seq": {"e": json.dumps({**doc, "seq": -5}).encode()},
        "upsert without an image": {"e": json.dumps({**doc, "image": None}).encode()},
        "bad src": {"e": json.dumps({**doc, "src": "mysql"}).encode()},
        "unknown table": {"e": json.dumps({**doc, "table": "no_such_table"}).encode()},
    }


@pytest.mark.parametrize("seed", SEEDS)
def test_bad_entries_dead_lettered_and_replayer_survives(
    fsettings: Settings, pg: PrivatePostgres, collector: Collector, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    monkeypatch.setattr(events_mod, "MAX_EVENT_BYTES", 64 * 1024)  # the real limit is 64 MiB; same code path
    key = stream_key(fsettings.namespace)
    with running_workload(fsettings, seed, 15) as (dw, wl):
        assert Relay.for_backends(dw.backends).drain(timeout=20)
        Replayer(dw.backends, dw.tables, consumer="w", block_ms=50).run(once=True)
        dw.stop_relay()  # foreign XADDs below use auto ids, above every outbox seq (see the relay test below)
        bad = _bad_entries(seed)
        ids = {kind: dw.backends.redis.xadd(key, fields).decode() for kind, fields in bad.items()}
        extra_col = json.loads(_good_event(800 + seed, seq=10**9).to_json())
        extra_col["image"]["nope"] = 1
        extra_id = dw.backends.redis.xadd(key, {"e": json.dumps(extra_col).encode()}).decode()
        # replayed events: an already-applied event added again is a no-op (stale), not a dead letter
        replayed = [f for _eid, f in dw.backends.redis.xrange(key, count=5)]
        for f in replayed:
            dw.backends.redis.xadd(key, f)
        rp = Replayer(dw.backends, dw.tables, consumer="w", block_ms=50, max_failures=2)
        stats = rp.run(once=True)  # returns: it never dies on bad input
        assert rp.caught_up()
        dead = {
            f[b"id"].decode(): {k.decode(): v.decode(errors="replace") for k, v in f.items()}
            for _e, f in dw.backends.redis.xrange(dead_letter_key(fsettings.namespace))
        }
        for kind, eid in ids.items():
            assert eid in dead, f"{kind} was not dead-lettered"
            d = dead[eid]
            assert d["reason"] in ("decode", "unknown_table", "apply", "schema") and d["error"]
            collector.bad_input[kind] = f"dead letter, reason `{d['reason']}`: {d['error'][:70]}"
        assert dead[ids["unknown table"]]["reason"] == "unknown_table"
        assert extra_id in dead, "an image with a column not in the table was not dead-lettered"
        assert dead[extra_id]["reason"] == "schema" and "nope" in dead[extra_id]["error"], dead[extra_id]
        collector.bad_input["image with a column not in the table"] = (
            f"dead letter, reason `schema`: {dead[extra_id]['error'][:70]}"
        )
        with dw.backends.postgres.connect() as conn:  # nothing of it applied
            assert conn.execute(select(items.c.id).where(items.c.id == 800 + seed)).all() == []
        n_dead = len(bad) + 1
        assert stats.stale >= len(replayed)
        collector.bad_input["replayed event (same payload again)"] = "no-op: applied as stale (version check)"
        out = heal_and_verify(dw, TABLES, since=time.monotonic(), expected_dead=n_dead)
        assert out.dead_letters == n_dead


def test_foreign_auto_id_entry_does_not_stall_the_relay(fsettings: Settings, pg: PrivatePostgres) -> None:
    dw = prepared_writer(fsettings, catalog(), phase="dual_write")
    key = stream_key(fsettings.namespace)
    try:
        dw.execute(insert(items).values(row(1, 1)))
        assert Relay.for_backends(dw.backends).drain(timeout=10)
        dw.backends.redis.xadd(key, {"e": b"garbage"})
        dw.execute(insert(items).values(row(2, 2)))
        Relay.for_backends(dw.backends).drain(timeout=10)
        seqs = [
            ChangeEvent.from_json(f[b"e"]).seq for _e, f in dw.backends.redis.xrange(key) if f.get(b"e") != b"garbage"
        ]
        assert seqs == [1, 2]
    finally:
        dw.close()


def test_list_dead_letters_with_binary_payload(fsettings: Settings, pg: PrivatePostgres) -> None:
    with prepared_writer(fsettings, catalog(), phase="dual_write") as dw:
        dw.backends.redis.xadd(stream_key(fsettings.namespace), {"e": b"\xff\xfe garbage"})
        Replayer(dw.backends, dw.tables, consumer="w", block_ms=50).run(once=True)
        assert len(list_dead_letters(dw.backends.redis, fsettings.namespace)) == 1


def test_hostile_names_and_sql_values_round_trip(
    fsettings: Settings, pg: PrivatePostgres, collector: Collector
) -> None:
    hmd = MetaData()
    # this test's own table: shaped like other suites' Table declarations; other names and types on purpose
    hostile = Table(
        'x"; DROP TABLE items;--',
        hmd,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("o'k", String(80)),
        Column('"quoted" col', String(80)),
        Column("select", String(80)),
    )
    for t in TABLES:
        t.to_metadata(hmd)
    cat = catalog() + Tables.of(hostile, store="toy")
    with prepared_writer(fsettings, cat, phase="dual_write", relay=True) as dw:
        values = [HOSTILE, "Robert'); DROP TABLE students;--", '"; DELETE FROM _dw_versions; --', "\\x00 %s %(x)s"]
        dw.execute(
            insert(hostile).values([{"id": i, "o'k": v, '"quoted" col': v, "select": v} for i, v in enumerate(values)])
        )
        dw.execute(insert(items).values({**row(1, 1), "name": HOSTILE}))
        # Postgres falls behind for the next writes: only the stream's replay brings them
        dw._apply_secondary = lambda *_a, **_k: None  # type: ignore[method-assign]
        dw.execute(update(hostile).where(hostile.c.id == 0).values({"o'k": HOSTILE + "2"}))
        dw.execute(insert(hostile).values({"id": 99, "o'k": HOSTILE, '"quoted" col': None, "select": "'"}))
        out = heal_and_verify(dw, [*TABLES, hostile], since=time.monotonic())
        report = verify_tables([*TABLES, hostile], dw.backends.sqlite_read, dw.backends.postgres)
        assert report.clean and {t.table: t.postgres_rows for t in report.tables}[hostile.name] == 5
        collector.bad_input["hostile table/column names, SQL in values"] = (
            f"round trip exact (5 rows, verify clean, {out.dead_letters} dead letters)"
        )
