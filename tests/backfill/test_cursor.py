"""Keyset paging (cursor.read_chunk) on real SQLite files: NULLs in key columns (SQLite allows them outside
INTEGER PRIMARY KEY and WITHOUT ROWID, and even lets two rows share such a key) must neither end the copy
early, skip rows nor loop; through a view (no rowid) too."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from sqlalchemy import Column, Integer, MetaData, PrimaryKeyConstraint, Table, Text

from dualwrite.backfill.cursor import decode_key, encode_key, read_chunk
from dualwrite.engines import sqlite_read_engine

md = MetaData()
pairs = Table("pairs", md, Column("a", Text), Column("b", Integer), Column("v", Text), PrimaryKeyConstraint("a", "b"))
singles = Table("singles", md, Column("k", Text, primary_key=True), Column("v", Text))
pair_view = Table(
    "pairs_v", md, Column("a", Text), Column("b", Integer), Column("v", Text), PrimaryKeyConstraint("a", "b")
)

SCHEMA = """
CREATE TABLE _dw_meta (name TEXT PRIMARY KEY, value INTEGER);
INSERT INTO _dw_meta VALUES ('last_seq', 7);
CREATE TABLE pairs (a TEXT, b INTEGER, v TEXT, PRIMARY KEY (a, b));
CREATE TABLE singles (k TEXT PRIMARY KEY, v TEXT);
CREATE VIEW pairs_v AS SELECT a, b, v FROM pairs;
"""


def make_db(path: Path, pair_rows: list[tuple[Any, ...]], single_rows: list[tuple[Any, ...]]) -> str:
    con = sqlite3.connect(path)
    con.executescript(SCHEMA)
    con.executemany("INSERT INTO pairs VALUES (?, ?, ?)", pair_rows)
    con.executemany("INSERT INTO singles VALUES (?, ?)", single_rows)
    con.commit()
    con.close()
    return f"sqlite:///{path}"


def page_all(url: str, table: Table, size: int, *, resume: bool = False) -> list[tuple[Any, ...]]:
    """Every row read chunk by chunk; with resume=True the cursor goes through the checkpoint's text form."""
    engine = sqlite_read_engine(url)
    out: list[tuple[Any, ...]] = []
    after = None
    try:
        for _ in range(10_000):  # a loop would never end: fail instead
            chunk = read_chunk(engine, table, after, size)
            assert chunk.version == 7
            out.extend(tuple(v) for v in chunk.values)
            if len(chunk.values) < size:
                return out
            after = decode_key(encode_key(chunk.last_key)) if resume else chunk.last_key  # type: ignore[arg-type]
        raise AssertionError("paging does not terminate")
    finally:
        engine.dispose()


def expected(path: str, sql: str) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(path.removeprefix("sqlite:///"))
    try:
        return [tuple(r) for r in con.execute(sql)]
    finally:
        con.close()


def test_null_keys_do_not_end_the_copy_early(tmp_path) -> None:  # type: ignore[no-untyped-def]
    rows = [(None, 1, "n1"), (None, 1, "dup"), (None, None, "nn"), ("x", None, "xn"), ("x", 1, "x1"), ("y", 2, "y2")]
    url = make_db(tmp_path / "s.db", rows, [(None, "a"), (None, "b"), ("k", "c"), ("l", "d")])
    want = expected(url, "SELECT a, b, v FROM pairs ORDER BY a, b, rowid")
    for size in range(1, 8):
        assert page_all(url, pairs, size) == want, size
        assert page_all(url, pairs, size, resume=True) == want, size
    singles_want = expected(url, "SELECT k, v FROM singles ORDER BY k, rowid")
    for size in range(1, 6):
        assert page_all(url, singles, size) == singles_want, size


def test_view_without_rowid_pages_null_keys(tmp_path) -> None:  # type: ignore[no-untyped-def]
    rows = [(None, 1, "n1"), (None, 2, "n2"), ("x", None, "xn"), ("x", 1, "x1"), (None, None, "nn")]
    url = make_db(tmp_path / "v.db", rows, [])
    want = expected(url, "SELECT a, b, v FROM pairs ORDER BY a, b")
    for size in range(1, 7):
        assert page_all(url, pair_view, size) == want, size


key_part = st.one_of(st.none(), st.sampled_from(["", "a", "B", "é", "a b", "a\x00"]))
num_part = st.one_of(st.none(), st.integers(-3, 3))


@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(keys=st.lists(st.tuples(key_part, num_part), max_size=25), size=st.integers(1, 6), resume=st.booleans())
def test_random_null_keys_page_exactly_once(tmp_path_factory: pytest.TempPathFactory, keys, size, resume) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path_factory.mktemp("cur") / "h.db"
    con = sqlite3.connect(path)
    con.executescript(SCHEMA)
    for i, (a, b) in enumerate(keys):
        try:  # a repeated non-NULL key is refused by SQLite: skip it
            con.execute("INSERT INTO pairs VALUES (?, ?, ?)", (a, b, f"r{i}"))
        except sqlite3.IntegrityError:
            pass
    con.commit()
    con.close()
    url = f"sqlite:///{path}"
    assert page_all(url, pairs, size, resume=resume) == expected(url, "SELECT a, b, v FROM pairs ORDER BY a, b, rowid")
