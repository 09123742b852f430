"""The Copier's fast path (COPY straight into fresh keys) against the apply rule, on the real servers: keys a
live event reached first, tombstones, rows without a version row, and live applies racing the chunk's
COPY in both orders (one transaction blocked on the other's unique-index entry)."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Engine,
    Float,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    Uuid,
    insert,
    text,
)

from dualwrite.apply.rule import apply_events
from dualwrite.backfill.copy_format import binary_oids
from dualwrite.backfill.cursor import read_chunk
from dualwrite.backfill.load import copy_apply, load_chunk
from dualwrite.events import key_text, key_texts
from dualwrite.types import JSONType, UTCDateTime
from tests.backfill.support import (
    Race,
    account_row,
    accounts,
    delete,
    names,
    seed_sqlite,
    snapshot,
    tags,
    upsert,
    versions,
)


def load(engine: Engine, chunk) -> tuple[Any, bool]:  # type: ignore[no-untyped-def]
    with engine.begin() as conn:
        return load_chunk(conn, accounts, chunk.columns, chunk.values, chunk.version)


def test_fresh_chunk_is_copied_with_its_version(dw, copier_pg) -> None:  # type: ignore[no-untyped-def]
    seed_sqlite(dw, 40)
    chunk = read_chunk(dw.backends.sqlite_read, accounts, None, 100)
    result, fell_back = load(copier_pg, chunk)
    assert (result.applied, result.stale, fell_back) == (40, 0, False)
    assert versions(dw.backends.postgres) == {f"[{i}]": 100 for i in range(1, 41)}
    assert snapshot(dw.backends.postgres, accounts) == snapshot(dw.backends.sqlite_read, accounts)
    result, fell_back = load(copier_pg, chunk)  # again: every key is taken, equal versions are no-ops
    assert (result.applied, result.stale, fell_back) == (0, 40, True)


def test_keys_reached_first_follow_the_apply_rule(dw, copier_pg) -> None:  # type: ignore[no-untyped-def]
    seed_sqlite(dw, 30)
    chunk = read_chunk(dw.backends.sqlite_read, accounts, None, 100)  # S = 100
    dw.apply("postgres", [upsert(3, 105, "newer"), delete(4, 106), upsert(5, 90, "older"), upsert(6, 100, "equal")])
    with dw.backends.postgres_apply.begin() as conn:  # a row loaded outside the apply rule: no version row
        conn.execute(insert(accounts).values(account_row(7, "unversioned")))
    result, fell_back = load(copier_pg, chunk)
    assert fell_back and (result.applied, result.stale) == (27, 3)
    got = names(dw.backends.postgres)
    assert got[3] == "newer" and 4 not in got  # newer image kept, tombstone not resurrected
    assert (got[5], got[7], got[8]) == ("acct-5 é", "acct-7 é", "acct-8 é")  # older / unversioned: overwritten
    assert got[6] == "equal"  # equal version: a no-op
    v = versions(dw.backends.postgres)
    assert (v["[3]"], v["[4]"], v["[5]"], v["[6]"], v["[7]"], v["[8]"]) == (105, 106, 100, 100, 100, 100)


def test_composite_text_keys_use_the_event_key_text(dw, copier_pg) -> None:  # type: ignore[no-untyped-def]
    with dw.backends.sqlite.begin() as conn:
        conn.execute(insert(tags), [{"tenant": t, "n": n, "label": "x"} for t in ("a", 'q"\\', "é\t") for n in (1, 2)])
    chunk = read_chunk(dw.backends.sqlite_read, tags, None, 100)
    with copier_pg.begin() as conn:
        result, _ = load_chunk(conn, tags, chunk.columns, chunk.values, chunk.version)
    assert result.applied == 6
    with dw.backends.postgres.connect() as conn:
        keys = set(conn.execute(text("SELECT pk FROM _dw_versions WHERE tbl = 'bf_tags'")).scalars())
    assert keys == {key_text([r["tenant"], r["n"]]) for r in chunk.rows}
    assert snapshot(dw.backends.postgres, tags) == snapshot(dw.backends.sqlite_read, tags)


@given(st.lists(st.one_of(st.integers(), st.booleans(), st.none(), st.text(max_size=4), st.floats()), max_size=20))
@hsettings(max_examples=200, deadline=None)
def test_key_texts_equal_key_text(values: list[Any]) -> None:
    rows = [(v, 0) for v in values]
    assert key_texts(rows, [0]) == [key_text([v]) for v in values]
    assert key_texts(rows, [1, 0]) == [key_text([0, v]) for v in values]
    assert key_texts([(2**70,), (-(2**63),), (True,)], [0]) == [
        "[1180591620717411303424]",
        "[-9223372036854775808]",
        "[true]",
    ]


# -- races: two transactions on one key, each order -----------------------------------------------
@pytest.mark.parametrize("live_seq, live_wins", [(101, True), (99, False)])
def test_live_apply_uncommitted_during_copy(dw, copier_pg, live_seq, live_wins) -> None:  # type: ignore[no-untyped-def]
    """A live apply holds key 10 uncommitted; the chunk's COPY waits on it, then fails on the unique index
    and merges: the newer image stays, an older one is overwritten by the chunk (version S = 100)."""
    seed_sqlite(dw, 20)
    chunk = read_chunk(dw.backends.sqlite_read, accounts, None, 100)
    race = Race()

    def live() -> None:
        with dw.backends.postgres_apply.begin() as conn:
            apply_events(conn, dw.tables.table, [upsert(10, live_seq, "live")])
            race.hold()

    def copy() -> Any:
        with copier_pg.begin() as conn:
            race.waiting(conn)
            return load_chunk(conn, accounts, chunk.columns, chunk.values, chunk.version)

    live_out, copy_out = race.run(dw, live, copy)
    assert live_out == [None]
    result, fell_back = copy_out[0]
    assert fell_back and result.applied == (19 if live_wins else 20)
    assert names(dw.backends.postgres)[10] == ("live" if live_wins else "acct-10 é")
    assert versions(dw.backends.postgres)["[10]"] == max(live_seq, 100)
    assert len(names(dw.backends.postgres)) == 20


@pytest.mark.parametrize("path", ["fast", "merge"])
@pytest.mark.parametrize("live", ["newer", "older", "delete"])
def test_live_apply_waits_for_the_copy(dw, copier_pg, live, path) -> None:  # type: ignore[no-untyped-def]
    """The chunk's rows are in, uncommitted; a live apply of key 10 waits, then compares against S. (The
    delete case found a bug in applysql.py, fixed in 61384db: its DELETE ran in the claim's statement, on
    a snapshot from before the chunk committed, and missed the row.)"""
    seed_sqlite(dw, 20)
    chunk = read_chunk(dw.backends.sqlite_read, accounts, None, 100)
    event = {"newer": upsert(10, 101, "live"), "older": upsert(10, 99, "old"), "delete": delete(10, 102)}[live]
    race = Race()

    def copy() -> Any:
        with copier_pg.begin() as conn:
            if path == "fast":
                res, fell_back = load_chunk(conn, accounts, chunk.columns, chunk.values, chunk.version)
                assert not fell_back
            else:
                res = copy_apply(conn, accounts, chunk.rows, chunk.version)
            race.hold()
        return res

    def live_apply() -> Any:
        with dw.backends.postgres_apply.begin() as conn:
            race.waiting(conn)
            return apply_events(conn, dw.tables.table, [event])

    copy_out, live_out = race.run(dw, copy, live_apply)
    assert copy_out[0].applied == 20
    assert live_out[0].applied == (0 if live == "older" else 1)
    got = names(dw.backends.postgres)
    assert {"newer": got.get(10) == "live", "older": got.get(10) == "acct-10 é", "delete": 10 not in got}[live]
    assert versions(dw.backends.postgres)["[10]"] == max(event.seq, 100)


# -- binary COPY: the same rows as the text path, for every common type ---------------------------------
types_md = MetaData()
# this module's own tables: shaped like other suites' Table declarations; other names and types on purpose
typed = Table(
    "bf_types",
    types_md,
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("small", SmallInteger),
    Column("f", Float),
    Column("flag", Boolean),
    Column("s", String(12)),
    Column("t", Text),
    Column("d", Date),
    Column("naive", DateTime),
    Column("aware", UTCDateTime),
    Column("blob", LargeBinary),
    Column("u", Uuid),
    Column("doc", JSONType),
)


def typed_rows() -> list[dict[str, Any]]:
    floats = [0.0, -1.5, float("inf"), float("-inf"), 1e300, 5e-324]
    return [
        {
            "id": i * 1_000_000_007,
            "small": i - 3,
            "f": floats[i % len(floats)],
            "flag": i % 2 == 0,
            "s": "é" * (i % 12),
            "t": "tab\tnl\n\\ quote' \u2028" * i,
            "d": date(2026, 1, 1) + timedelta(days=i),
            "naive": datetime(2026, 1, 1, 12, 0, 0, i),
            "aware": datetime(2026, 1, 1, tzinfo=UTC) + timedelta(hours=i),
            "blob": bytes(range(i)),
            "u": uuid.UUID(int=i),
            "doc": {"i": i, "list": [1, "x", None], "s": "é\\"},
        }
        for i in range(1, 9)
    ] + [{"id": 0, **{c.name: None for c in typed.columns if c.name != "id"}}]


@pytest.mark.parametrize("binary", [True, False])
def test_binary_copy_writes_what_the_text_path_writes(dw, copier_pg, binary, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import dualwrite.backfill.load as fp
    types_md.create_all(dw.backends.sqlite)
    types_md.create_all(dw.backends.postgres)
    with dw.backends.sqlite.begin() as conn:
        conn.execute(insert(typed), typed_rows())
    monkeypatch.setattr(fp, "BINARY", binary)
    used: list[Any] = []
    monkeypatch.setattr(fp, "binary_oids", lambda rows, types: used.append(binary_oids(rows, types)) or used[-1])
    chunk = read_chunk(dw.backends.sqlite_read, typed, None, 100)
    with copier_pg.begin() as conn:
        result, _ = load_chunk(conn, typed, chunk.columns, chunk.values, chunk.version)
    assert result.applied == 9
    if binary and copier_pg.dialect.driver == "psycopg":
        assert len(used) == 1 and used[0] is not None  # every column of this table can go binary
    else:
        assert used == []  # psycopg2, or binary off: text
    assert snapshot(dw.backends.postgres, typed) == snapshot(dw.backends.sqlite_read, typed)


def test_binary_only_when_every_value_fits_its_column() -> None:
    aware, naive = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 1)
    assert binary_oids([(1, "a", aware), (None, None, None)], [(20, "int8"), (25, "text"), (1184, "timestamptz")])
    assert binary_oids([(True,)], [(23, "int4")]) is None  # a bool in an int column: text refuses it
    assert binary_oids([("1",)], [(16, "bool")]) is None
    assert binary_oids([("{}",)], [(3802, "jsonb")]) is None  # text would parse it, binary would quote it
    assert binary_oids([(naive,)], [(1184, "timestamptz")]) is None  # the session time zone decides, in text
    assert binary_oids([(aware,)], [(1114, "timestamp")]) is None
    assert binary_oids([(aware,)], [(1082, "date")]) is None  # a datetime is a date subclass, not a date
    assert binary_oids([(Decimal(1),)], [(1700, "numeric")]) is None
    assert binary_oids([(1,)], [(701, "float8")]) == [701]
