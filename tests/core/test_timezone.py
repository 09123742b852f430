"""The one time-zone rule (issue 14): a naive value of a timezone-aware column is UTC, on both sides and in
every path, even when the Postgres server's TimeZone is not UTC.

Runs against a private database on the shared server whose TimeZone is America/New_York (whatever the
suite's DUALWRITE_TEST_PG_TIMEZONE): history written before capture, live dual writes, a backfill (COPY),
the inline apply and the replay, then Postgres as the primary writing back to SQLite; every timestamp is
compared to the microsecond with what the application wrote, and verify agrees."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest
from click.testing import CliRunner
from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, create_engine, insert, select, text, update

from dualwrite.backfill.copier import Copier
from dualwrite.cli.main import main
from dualwrite.settings import Settings
from dualwrite.stream.relay import Relay
from dualwrite.stream.replay import Replayer
from dualwrite.tables import Tables
from dualwrite.testing import prepared_writer
from dualwrite.types import UTCDateTime
from dualwrite.verify.verifier import verify_tables
from tests.conftest import connection_args, database_in_timezone

ZONE = "America/New_York"
md = MetaData()
stamps = Table(
    "tz_stamps",
    md,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("at", DateTime(timezone=True)),  # SQLite hands these back naive: UTC by the rule
    Column("at_utc", UTCDateTime),
    Column("wall", DateTime()),  # timezone-naive on both sides: never shifted either
    Column("note", String(40)),
)
EST = timezone(timedelta(hours=-5))
BASE = datetime(2026, 3, 8, 6, 59, 59, 999_999, tzinfo=UTC)  # around New York's DST switch (07:00 UTC)


def instant(i: int) -> datetime:
    return BASE + timedelta(minutes=37 * i, microseconds=1_003 * i)


def written(i: int, n: int | None = None) -> dict[str, object]:
    """What the application writes for row i at instant n (default i): naive UTC for `at` in odd rows
    (how SQLite applications store it), aware elsewhere."""
    at = instant(i if n is None else n)
    return {
        "id": i,
        "at": at.replace(tzinfo=None) if i % 2 else at,  # naive or aware UTC: the same instant
        "at_utc": at.astimezone(EST),  # another offset: stored as UTC
        "wall": at.replace(tzinfo=None) - timedelta(hours=3),
        "note": f"r{i}",
    }


@pytest.fixture
def ny_settings(settings: Settings) -> Iterator[Settings]:
    with database_in_timezone(ZONE) as url:
        admin = create_engine(url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{settings.pg_schema}"'))
            assert conn.execute(text("SHOW TimeZone")).scalar() == ZONE  # the database's default, not UTC
        admin.dispose()
        yield settings.with_(postgres_url=url)


def _sqlite_rows(dw) -> dict[int, dict[str, object]]:  # type: ignore[no-untyped-def]
    with dw.backends.sqlite_read.connect() as conn:
        return {r["id"]: dict(r) for r in conn.execute(select(stamps)).mappings()}


def _pg_rows(url: str, schema: str) -> dict[int, dict[str, object]]:
    """Postgres' rows read by a session in the database's own TimeZone (not one of dualwrite's)."""
    engine = create_engine(url, connect_args={"options": f"-csearch_path={schema}"})
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SHOW TimeZone")).scalar() == ZONE
            return {r["id"]: dict(r) for r in conn.execute(select(stamps)).mappings()}
    finally:
        engine.dispose()


def _assert_exact(dw, url: str, schema: str, expected: dict[int, datetime]) -> None:  # type: ignore[no-untyped-def]
    lite, pg = _sqlite_rows(dw), _pg_rows(url, schema)
    assert sorted(lite) == sorted(pg) == sorted(expected)
    for i, at in expected.items():
        # SQLite keeps the UTC wall time of `at` (naive), Postgres the instant: equal to the microsecond
        assert lite[i]["at"] == at.replace(tzinfo=None), (i, lite[i]["at"], at)
        assert pg[i]["at"] == at and pg[i]["at"].utcoffset() != timedelta(0), (i, pg[i]["at"], at)
        assert lite[i]["at_utc"] == pg[i]["at_utc"] == at
        assert lite[i]["wall"] == pg[i]["wall"] == at.replace(tzinfo=None) - timedelta(hours=3)
    report = verify_tables([stamps], dw.backends.sqlite_read, dw.backends.postgres)
    assert report.clean, report.to_dict()


def test_timestamps_survive_a_new_york_postgres(ny_settings: Settings) -> None:
    s = ny_settings
    with prepared_writer(s, Tables.of(md, store="tz"), phase="sqlite", relay=False) as dw:
        expected: dict[int, datetime] = {}
        dw.execute(insert(stamps).values([written(i) for i in range(40)]))  # history: before capture
        expected.update({i: instant(i) for i in range(40)})
        dw.phases.set("dual_write", force=True, reason="test")
        dw.execute(insert(stamps).values([written(i) for i in range(40, 60)]))  # live: the inline apply
        dw.execute(update(stamps).where(stamps.c.id == 45).values(written(45, 200)))
        expected.update({i: instant(i) for i in range(40, 60)} | {45: instant(200)})
        copier = Copier.for_backends(dw.backends, chunk_size=16)
        reports = copier.copy_tables([stamps])  # the COPY path: naive SQLite values into timestamptz
        assert reports[0].rows_copied == 60
        _assert_exact(dw, s.postgres_url, s.pg_schema, expected)

        # the replay path: an event whose inline apply never happened (Postgres wiped of it), replayed
        with dw.backends.postgres.begin() as conn:
            conn.execute(stamps.delete().where(stamps.c.id >= 50))
            conn.execute(text("DELETE FROM _dw_versions"))
            conn.execute(text("DELETE FROM _dw_ranges"))  # the copy's range versions too (apply/ranges.py)
        assert Relay.for_backends(dw.backends).drain(timeout=20)
        Replayer(dw.backends, dw.tables, consumer="tz", block_ms=50).run(once=True)
        _assert_exact(dw, s.postgres_url, s.pg_schema, expected)

        # Postgres as the primary: its aware values reach SQLite as UTC wall times
        for target in ("shadow", "postgres_reads", "postgres_primary"):
            dw.phases.set(target, force=True, reason="test")
        from dualwrite.switch import switch_primary

        switch_primary(dw.backends, dw.tables, "postgres")
        dw.execute(insert(stamps).values([written(i) for i in range(60, 70)]))
        dw.execute(update(stamps).where(stamps.c.id == 3).values(written(3, 300)))
        expected.update({i: instant(i) for i in range(60, 70)} | {3: instant(300)})
        _assert_exact(dw, s.postgres_url, s.pg_schema, expected)


def test_doctor_reports_a_non_utc_server(ny_settings: Settings) -> None:
    result = CliRunner().invoke(main, ["doctor", *connection_args(ny_settings)])
    line = next(x for x in result.output.splitlines() if x.startswith("timezone"))
    assert " ok " in line and f"server TimeZone is {ZONE}, not UTC" in line
    assert "dualwrite's sessions run with TimeZone=UTC" in line
