"""Migrate's in-database sums (dualwrite/migrate/sums.py): which columns are summed in SQL, that the exact float
rendering is the same text on both engines and names the double exactly, that a value changed in a summed
column on a range of many is found, and that a table whose key SQL cannot range verifies on the client."""

from __future__ import annotations

import random
import sqlite3
import struct

import psycopg2
import pytest

from dualwrite.migrate import sums
from dualwrite.migrate.schema import reflect
from dualwrite.verify.sql_render import Col, postgres_render, sqlite_render
from tests.conftest import PG_ADMIN_URL
from tests.migrate.support import fetch, make_db, migrate

pytestmark = pytest.mark.usefixtures("source_side_where")


def doubles() -> list[float]:
    rng = random.Random(7)
    out = [struct.unpack("d", struct.pack("Q", rng.getrandbits(64)))[0] for _ in range(3000)]
    out += [round(rng.random(), 6) for _ in range(1000)] + [
        rng.random() * 10 ** rng.randint(-30, 30) for _ in range(1000)
    ]
    for k in range(-960, 1024, 11):  # powers of two and their neighbours: where log2 may be off by one
        out += [2.0**k, 2.0**k * (1 - 2**-53), 2.0**k * (1 + 2**-52)]
    out += [0.0, 1.0, -1.0, 2.0**53, 2.0**53 + 2, 0.1, 0.10000000000000002, 1e300, 5e-324, 1.7976931348623157e308]
    return [v for v in out if v == v and abs(v) != float("inf")]


def test_exact_float_rendering_is_the_same_text_and_the_exact_double() -> None:
    values = doubles()
    col = Col("x", "float_exact", True)
    render, guard = sqlite_render(col)
    lite = sqlite3.connect(":memory:")
    lite.execute("CREATE TABLE t (i INTEGER PRIMARY KEY, x REAL)")
    lite.executemany("INSERT INTO t VALUES (?, ?)", enumerate(values))
    mine = {i: (text, bool(odd)) for i, text, odd in lite.execute(f"SELECT i, {render}, {guard} FROM t")}
    conn = psycopg2.connect(PG_ADMIN_URL.replace("+psycopg2", ""))
    try:
        cur = conn.cursor()
        cur.execute("CREATE TEMP TABLE t (i int8, x float8)")
        cur.executemany("INSERT INTO t VALUES (%s, %s)", list(enumerate(values)))
        cur.execute(f"SELECT i, {postgres_render(col)} FROM t")
        theirs = dict(cur.fetchall())
    finally:
        conn.close()
    trusted = [i for i, (_, odd) in mine.items() if not odd]
    # only subnormals and values from 2^53 on (where float() of a stored integer could round) go to the client
    ordinary = [i for i, v in enumerate(values) if v == 0 or 1e-290 <= abs(v) < 2.0**53]
    assert set(ordinary) <= set(trusted) and len(ordinary) > 2000
    for i in trusted:
        text = mine[i][0]
        assert text == theirs[i], (values[i], text, theirs[i])
        m, _, e = text.partition("p")
        assert (int(m) * 2.0 ** (int(e) - 52) if e else float(m)) == values[i]


def test_which_columns_are_summed_in_sql(tmp_path) -> None:  # type: ignore[no-untyped-def]
    db = make_db(tmp_path / "a.db", "CREATE TABLE t (id INTEGER PRIMARY KEY, x REAL, at DATETIME, doc JSON, p NUMERIC)")
    (plan,) = reflect(db).tables
    cols, rest = sums.split(plan)  # type: ignore[misc]
    assert [(c.name, c.kind) for c in cols] == [("id", "int"), ("x", "float_exact"), ("at", "datetime")]
    assert rest == ["doc", "p"]
    db = make_db(tmp_path / "b.db", "CREATE TABLE d (day DATE PRIMARY KEY, n INTEGER)")
    assert not sums.in_sql(reflect(db).tables[0])  # a date key: the whole table on the client


MANY = "CREATE TABLE m (id INTEGER PRIMARY KEY, x REAL, name TEXT, at DATETIME, doc JSON);"


@pytest.mark.parametrize(
    "planted",
    [
        "UPDATE m SET x = x + 1e-12 WHERE id = 7001",  # a float's last digits, in a summed column
        "UPDATE m SET name = 'changed' WHERE id = 2500",
        "UPDATE m SET doc = '{\"k\": 0}' WHERE id = 6100",  # a client-side column of a range SQL agrees on
    ],
)
def test_a_change_in_one_range_of_many_is_found(tmp_path, pg_schema, monkeypatch, planted) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(sums, "SEGMENT_ROWS", 1000)
    rows = [(i, i / 7, f"n{i}", f"2024-01-01 00:00:{i % 60:02d}.000000", f'{{"k": {i}}}') for i in range(1, 8001)]
    db = make_db(tmp_path / "m.db", MANY, {"m": rows})
    result, rep = migrate(db, pg_schema, "--keep-state")
    assert rep["tables"][0]["verified"], result.output
    fetch(pg_schema, planted + " RETURNING 1")
    result, rep = migrate(db, pg_schema, "--resume")
    assert rep["tables"][0]["why_not_verified"] == "row hashes differ", result.output


def test_a_key_sql_cannot_range_verifies_on_the_client(tmp_path, pg_schema) -> None:  # type: ignore[no-untyped-def]
    script = "CREATE TABLE d (day DATE PRIMARY KEY, n INTEGER, x REAL);"
    db = make_db(
        tmp_path / "d.db", script, {"d": [("2024-01-01", 1, 0.5), ("2024-01-02", 2, 0.25), ("2024-01-03", 3, 0.1)]}
    )
    result, rep = migrate(db, pg_schema, "--keep-state")
    assert rep["tables"][0]["verified"] and rep["tables"][0]["read"] == 3, result.output
    fetch(pg_schema, "UPDATE d SET x = 0.10000000000000002 WHERE n = 3 RETURNING 1")
    result, rep = migrate(db, pg_schema, "--resume")
    assert rep["tables"][0]["why_not_verified"] == "row hashes differ", result.output


def test_a_key_whose_bounds_postgres_cannot_compare_verifies_on_the_client(tmp_path, pg_schema, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """An untyped SQLite key holding numbers and text: cast to text, but a range bound would be an integer."""
    monkeypatch.setattr(sums, "SEGMENT_ROWS", 2)
    rows = [(1, 0.5), (2, 0.25), ("a", 0.1), ("b", 1.0), (3, 2.0)]
    db = make_db(tmp_path / "u.db", "CREATE TABLE u (k PRIMARY KEY, x REAL);", {"u": rows})
    result, rep = migrate(db, pg_schema, "--keep-state")
    assert rep["tables"][0]["verified"] and rep["tables"][0]["read"] == 5, result.output
    fetch(pg_schema, "UPDATE u SET x = 0.10000000000000002 WHERE k = 'a' RETURNING 1")
    result, rep = migrate(db, pg_schema, "--resume")
    assert rep["tables"][0]["why_not_verified"] == "row hashes differ", result.output
