"""verify's first pass in the databases (shadow.sqlsum): equal data gives equal chunk checksums for every
supported type, real differences are found to the row, and normalization-only differences are not
reported (the exact Python comparison decides every chunk the fast pass cannot vouch for)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Date,
    DateTime,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    insert,
    update,
)

from dualwrite.tables import Tables
from dualwrite.testing import prepared_writer
from dualwrite.types import ExactDecimal, UTCDateTime
from dualwrite.verify import sql_checksums as sqlsum
from dualwrite.verify import sql_render
from dualwrite.verify.verifier import TableVerifier

md = MetaData()
# this module's own tables: shaped like other suites' Table declarations; other names and types on purpose
typed = Table(
    "sq_typed",
    md,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("name", String(64), nullable=False),
    Column("note", Text, nullable=True),
    Column("score", Float, nullable=True),
    Column("flag", Boolean, nullable=True),
    Column("at", DateTime, nullable=True),
    Column("utc", UTCDateTime, nullable=True),
    Column("day", Date, nullable=True),
    Column("price", ExactDecimal(12, 2), nullable=True),
    Column("blob", LargeBinary, nullable=True),
)
keyed = Table(
    "sq_keyed",
    md,
    Column("tenant", String(32), primary_key=True),
    Column("n", Integer, primary_key=True, autoincrement=False),
    Column("value", Text, nullable=True),
)
docs = Table(
    "sq_docs",
    md,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("doc", JSON, nullable=False),
)
N = 3000


def _row(i: int) -> dict:
    return {
        "id": i,
        "name": f"name-{i}" + (" é" if i % 11 == 0 else ""),
        "note": None if i % 5 == 0 else ("" if i % 7 == 0 else f"note {i}\n\ttabbed \\ back"),
        "score": None if i % 13 == 0 else [i * 0.1, 1e20 * i, -i / 3, float(i), 1234567890123.0 + i][i % 5],
        "flag": None if i % 17 == 0 else bool(i % 2),
        "at": datetime(2024, 1, 1) + timedelta(seconds=i, microseconds=(i * 7919) % 1_000_000 if i % 3 else 0),
        "utc": datetime(2024, 6, 1, tzinfo=UTC) + timedelta(minutes=i, microseconds=i % 4 * 250_000),
        "day": date(2020, 1, 1) + timedelta(days=i),
        "price": Decimal(i) / 4 - 100,
        "blob": None if i % 19 == 0 else bytes([i % 256, 0, 255]) * (i % 3),
    }


@pytest.fixture
def dw(settings):
    w = prepared_writer(settings, Tables.of([typed, keyed, docs], store="sqtest"), phase="sqlite")
    rows = [_row(i) for i in range(N)]
    krows = [{"tenant": ["acme", "Beta", "zeta", "émile"][i % 4], "n": i, "value": f"v{i}"} for i in range(N)]
    for engine in (w.backends.sqlite, w.backends.postgres):
        with engine.begin() as conn:
            conn.execute(insert(typed), rows)
            conn.execute(insert(keyed), krows)
            conn.execute(insert(docs), [{"id": i, "doc": {"b": i, "a": [1, {"y": 2, "x": "é"}]}} for i in range(200)])
    yield w
    w.close()


def _verify(dw, table, **kw):
    tv = TableVerifier(table, dw.backends.sqlite_read, dw.backends.postgres, segment_rows=500, leaf_rows=16, **kw)
    return tv, tv.run()


def _pg(dw, sql: str) -> None:
    with dw.backends.postgres.begin() as conn:
        conn.exec_driver_sql(sql)


def _sqlite(dw, sql: str) -> None:
    with dw.backends.sqlite.begin() as conn:
        conn.exec_driver_sql(sql)


def test_every_supported_type_gives_equal_chunk_checksums(dw):
    assert sql_render.plan(typed) is not None and sql_render.plan(docs) is None
    tv, rep = _verify(dw, typed)
    assert tv.method == "in-database" and rep.clean, rep.to_dict()
    # No bisection at all: one query for the range bounds, one checksum query per chunk and side.
    chunks = -(-N // 500)
    assert rep.queries == 1 + 2 * chunks, rep.queries
    tv, rep = _verify(dw, keyed)
    assert tv.method == "in-database" and rep.clean and rep.queries == 1 + 2 * chunks, rep.to_dict()


def test_sparse_integer_keys_are_cut_at_existing_keys(dw):
    for run in (_sqlite, _pg):  # keys 0, 1009, 2018, ...: by value, nearly every range would be empty
        run(dw, "UPDATE sq_typed SET id = -id")
        run(dw, "UPDATE sq_typed SET id = -id * 1009")
    spans = sqlsum.ranges(dw.backends.sqlite_read, typed, sql_render.plan(typed), 500)
    assert len(spans) == -(-N // 500) and spans[1][0] == (500 * 1009,)
    _pg(dw, "UPDATE sq_typed SET name = 'moved' WHERE id = 2999 * 1009")
    tv, rep = _verify(dw, typed)
    assert tv.method == "in-database" and rep.differing == [f"[{2999 * 1009}]"]


def test_one_character_and_every_kind_of_difference_is_found(dw):
    _pg(dw, "UPDATE sq_typed SET name = 'name-1234x' WHERE id = 1234")  # one character
    _pg(dw, "UPDATE sq_typed SET at = at + interval '1 microsecond' WHERE id = 20")
    _pg(dw, "UPDATE sq_typed SET utc = utc + interval '1 second' WHERE id = 21")
    _pg(dw, "UPDATE sq_typed SET price = price + 0.01 WHERE id = 22")
    _pg(dw, "UPDATE sq_typed SET flag = NOT flag WHERE id = 23")
    _pg(dw, "UPDATE sq_typed SET blob = '\\x00'::bytea WHERE id = 24")
    _pg(dw, "UPDATE sq_typed SET day = day + 1 WHERE id = 25")
    _pg(dw, "UPDATE sq_typed SET score = 1234567890123.0 + 2999 WHERE id = 29")  # integral, > 12 digits
    _pg(dw, "UPDATE sq_typed SET note = '' WHERE id = 30")  # NULL vs empty text
    _pg(dw, "UPDATE sq_typed SET note = NULL WHERE id = 31")
    _pg(dw, "DELETE FROM sq_typed WHERE id = 2000")
    _pg(dw, "INSERT INTO sq_typed (id, name) VALUES (99999, 'extra')")
    tv, rep = _verify(dw, typed)
    assert tv.method == "in-database"
    assert sorted(rep.differing) == sorted(f"[{i}]" for i in (20, 21, 22, 23, 24, 25, 29, 30, 31, 1234))
    assert rep.missing == ["[2000]"] and rep.extra == ["[99999]"]
    _pg(dw, "UPDATE sq_keyed SET value = 'v4x' WHERE tenant = 'acme' AND n = 4")
    tv, rep = _verify(dw, keyed)
    assert rep.differing == ['["acme",4]'] and not rep.missing and not rep.extra


def test_normalization_only_differences_are_not_reported(dw):
    # JSON text with another key order, float noise, trailing spaces: the fast pass sees other text,
    # the bisection's exact comparison sees equal values.
    _sqlite(dw, """UPDATE sq_typed SET note = '{"b": 1, "a": [1, 2]}' WHERE id = 10""")
    _pg(dw, """UPDATE sq_typed SET note = '{"a":[1,2],"b":1}' WHERE id = 10""")
    _sqlite(dw, "UPDATE sq_typed SET score = 0.3 WHERE id = 11")
    _pg(dw, "UPDATE sq_typed SET score = 0.1 + 0.2 WHERE id = 11")
    _pg(dw, "UPDATE sq_typed SET name = name || '  ' WHERE id = 12")
    tv, rep = _verify(dw, typed)
    assert tv.method == "in-database" and rep.clean, rep.to_dict()
    tv, rep = _verify(dw, docs)  # a JSON column: hashed in Python (jsonb has its own text form)
    assert tv.method == "python" and rep.clean, rep.to_dict()
    _pg(dw, """UPDATE sq_docs SET doc = '{"a": [1, {"x": "é", "y": 3}], "b": 5}' WHERE id = 5""")
    assert _verify(dw, docs)[1].differing == ["[5]"]


def test_values_that_would_alias_in_the_joined_text_are_still_found(dw):
    # Separator and NULL-mark bytes inside values, and a blob where Postgres has the same bytes as text.
    _sqlite(dw, "UPDATE sq_typed SET note = 'a' || char(1) || 'b' WHERE id = 40")
    _sqlite(dw, "UPDATE sq_typed SET note = 'c' WHERE id = 41")
    _pg(dw, "UPDATE sq_typed SET note = 'a' WHERE id = 40")
    _pg(dw, "UPDATE sq_typed SET note = 'b' || chr(1) || 'c' WHERE id = 41")
    # Each case in a chunk of its own (500 rows a chunk), so each check has to catch its case alone.
    _sqlite(dw, "UPDATE sq_typed SET note = NULL WHERE id = 600")
    _pg(dw, "UPDATE sq_typed SET note = chr(3) WHERE id = 600")
    _sqlite(dw, "UPDATE sq_typed SET note = NULL WHERE id = 2101")  # a NULL and a NULL mark, swapped
    _sqlite(dw, "UPDATE sq_typed SET note = char(3) WHERE id = 2102")
    _pg(dw, "UPDATE sq_typed SET note = chr(3) WHERE id = 2101")
    _pg(dw, "UPDATE sq_typed SET note = NULL WHERE id = 2102")
    _sqlite(dw, "UPDATE sq_typed SET name = CAST('blobby' AS BLOB) WHERE id = 1100")
    _pg(dw, "UPDATE sq_typed SET name = 'blobby' WHERE id = 1100")
    _sqlite(dw, "UPDATE sq_typed SET score = 'zero' WHERE id = 1600")  # text in a REAL column
    _pg(dw, "UPDATE sq_typed SET score = 0 WHERE id = 1600")
    tv, rep = _verify(dw, typed)
    assert tv.method == "in-database"
    assert sorted(rep.differing) == ["[1100]", "[1600]", "[2101]", "[2102]", "[40]", "[41]", "[600]"], rep.to_dict()


def test_fast_pass_can_be_turned_off_and_agrees(dw):
    with dw.backends.postgres.begin() as conn:
        conn.execute(update(typed).where(typed.c.id == 77).values(note="changed"))
    fast = _verify(dw, typed)[1]
    slow_tv, slow = _verify(dw, typed, in_database=False)
    assert slow_tv.method == "python"
    assert fast.differing == slow.differing == ["[77]"]
    assert fast.sqlite_rows == slow.sqlite_rows == N and fast.postgres_rows == slow.postgres_rows == N
