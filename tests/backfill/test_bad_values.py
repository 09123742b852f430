"""A stored value that cannot be read or cast becomes a reject, never a stopped copy (issue 16, item 3):
one bad date, one bad JSON document and one text in an integer column are rejected with table, key,
column, value and reason, by `backfill run` (and its dry run) and by `migrate`; every other row is copied."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import JSON, Column, Date, Integer, MetaData, Table, Text, create_engine, func, select, text

from dualwrite.adapter import DualWriter
from dualwrite.cli.main import main
from dualwrite.settings import Settings
from dualwrite.tables import Tables
from dualwrite.testing import prepared_writer
from tests.conftest import PG_ADMIN_URL, connection_args, fresh_schema, state_schema_for

md = MetaData()
# this module's own tables: shaped like other suites' Table declarations; other names and types on purpose
items = Table(
    "bv_items",
    md,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("day", Date),
    Column("doc", JSON),
    Column("n", Integer),
    Column("note", Text),
)
ROWS = 30
BAD = {  # id -> (column, the stored value)
    5: ("day", "not a date"),
    13: ("doc", '{"a": 1,'),
    22: ("n", "twelve"),
}
META = ["--metadata", f"{__name__}:md"]


@pytest.fixture
def dirty(settings: Settings) -> Iterator[DualWriter]:
    """The SQLite file with ROWS rows, three of them holding a value their column's type cannot take."""
    dw = prepared_writer(settings, Tables.of([items]), phase="sqlite")
    with sqlite3.connect(settings.sqlite_path) as con:  # raw values, as a legacy application left them
        for i in range(1, ROWS + 1):
            day, doc, n = f"2026-01-{(i % 28) + 1:02d}", json.dumps({"i": i}), i * 10
            column, value = BAD.get(i, ("", None))
            day = value if column == "day" else day
            doc = value if column == "doc" else doc
            n = value if column == "n" else n  # type: ignore[assignment]
            con.execute("INSERT INTO bv_items VALUES (?, ?, ?, ?, ?)", (i, day, doc, n, f"row {i}"))
    yield dw
    dw.close()


def _rejects(path: Path) -> dict[str, dict[str, str]]:
    return {json.loads(line)["key"]: json.loads(line) for line in path.read_text().splitlines()}


def _assert_three_rejected(records: dict[str, dict[str, str]], table: str) -> None:
    assert set(records) == {f"[{i}]" for i in BAD}, records
    for i, (column, value) in BAD.items():
        rec = records[f"[{i}]"]
        assert rec["table"] == table and rec["column"] == column and rec["reason"], rec
        assert rec["value"] == repr(value), rec  # the raw value as stored


def _pg_ids(url: str, schema: str, table: str) -> set[int]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return set(conn.execute(text(f'SELECT id FROM "{schema}"."{table}"')).scalars())
    finally:
        engine.dispose()


def test_backfill_rejects_the_three_rows_and_copies_the_rest(dirty: DualWriter, settings: Settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    rejects = tmp_path / "rejects.jsonl"
    args = ["backfill", "run", *connection_args(settings), *META, "--no-replay", "--chunk-size", "8"]
    dry = CliRunner().invoke(main, [*args, "--dry-run", "--rejects", str(rejects)])
    assert dry.exit_code == 1, dry.output
    assert all(f"reject [{i}] column={c}" in dry.output for i, (c, _v) in BAD.items()), dry.output
    _assert_three_rejected(_rejects(rejects), "bv_items")
    with dirty.backends.postgres.connect() as conn:  # the dry run wrote nothing
        assert conn.execute(select(func.count()).select_from(items)).scalar() == 0
    rejects.unlink()

    report = tmp_path / "report.json"
    run = CliRunner().invoke(main, [*args, "--rejects", str(rejects), "--report", str(report)])
    assert run.exit_code == 1, run.output
    assert "3 row(s) rejected" in run.output and "Traceback" not in run.output, run.output
    _assert_three_rejected(_rejects(rejects), "bv_items")
    assert _pg_ids(PG_ADMIN_URL, settings.pg_schema, "bv_items") == set(range(1, ROWS + 1)) - set(BAD)
    assert json.loads(report.read_text())["rejected"] == 3


def test_max_rejects_stops_the_copy_early(dirty: DualWriter, settings: Settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    rejects = tmp_path / "rejects.jsonl"
    # chunks of 2 rows: the copy stops once the chunk holding the 2nd reject (13) and those in flight are in
    args = ["backfill", "run", *connection_args(settings), *META, "--no-replay", "--chunk-size", "2"]
    res = CliRunner().invoke(main, [*args, "--rejects", str(rejects), "--max-rejects", "1"])
    assert res.exit_code == 1 and "--max-rejects 1" in res.output, res.output
    copied = _pg_ids(PG_ADMIN_URL, settings.pg_schema, "bv_items")
    assert set(range(1, 15)) - {5, 13} <= copied and max(copied) < 22  # the 3rd bad row (22) was never reached


def test_migrate_rejects_the_three_rows_and_exits_1(dirty: DualWriter, settings: Settings, tmp_path, uid) -> None:  # type: ignore[no-untyped-def]
    with fresh_schema(f"m{uid}") as schema:
        out = tmp_path / "migrate-rejects"
        argv = ["migrate", "--sqlite", str(settings.sqlite_path), "--postgres", PG_ADMIN_URL, "--pg-schema", schema]
        argv += ["--state-schema", state_schema_for(schema), "--rejects", str(out), "--tables", "bv_items"]
        res = CliRunner().invoke(main, argv)
        assert res.exit_code == 1, res.output
        assert "3 row(s) rejected" in res.output and "Traceback" not in res.output, res.output
        _assert_three_rejected(_rejects(out / "rejects.jsonl"), "bv_items")
        assert _pg_ids(PG_ADMIN_URL, schema, "bv_items") == set(range(1, ROWS + 1)) - set(BAD)


def test_migrate_max_rejects_stops_early(dirty: DualWriter, settings: Settings, tmp_path, uid) -> None:  # type: ignore[no-untyped-def]
    with fresh_schema(f"n{uid}") as schema:
        argv = ["migrate", "--sqlite", str(settings.sqlite_path), "--postgres", PG_ADMIN_URL, "--pg-schema", schema]
        argv += ["--state-schema", state_schema_for(schema), "--rejects", str(tmp_path / "r"), "--tables", "bv_items"]
        res = CliRunner().invoke(main, [*argv, "--chunk-size", "2", "--max-rejects", "0"])
        assert res.exit_code == 1 and "more than --max-rejects 0" in res.output, res.output
        copied = _pg_ids(PG_ADMIN_URL, schema, "bv_items")  # up to the chunk with row 5, and those in flight
        assert {1, 2, 3, 4, 6} <= copied and max(copied) < 13 and 5 not in copied
