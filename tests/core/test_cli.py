"""The CLI front: init and doctor against the real servers, one-line errors with exit code 2."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from typing import Any

from click.testing import CliRunner
from sqlalchemy import Column, Integer, MetaData, Table, Text, create_engine, text

from dualwrite.bookkeeping import create_schema
from dualwrite.cli.main import main
from dualwrite.demo.app import tables as app_tables
from dualwrite.doctor import run_checks
from dualwrite.engines import sqlite_engine
from dualwrite.tables import Tables
from tests.conftest import PG_ADMIN_URL, connection_args

APP = ["--metadata", "dualwrite.demo.app:tables"]


def _tables_in(schema: str) -> set[str]:
    engine = create_engine(PG_ADMIN_URL)
    try:
        with engine.connect() as conn:
            return set(
                conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = :s"), {"s": schema}).scalars()
            )
    finally:
        engine.dispose()


def test_init_creates_only_dualwrites_tables_and_doctor_passes(settings) -> None:  # type: ignore[no-untyped-def]
    runner = CliRunner()
    sqlite3.connect(settings.sqlite_path).close()  # the application's file, before any init
    before = runner.invoke(main, ["doctor", *connection_args(settings)])
    line = next(x for x in before.output.splitlines() if x.startswith("bookkeeping"))
    assert before.exit_code == 1 and "FAIL" in line and "_dw_meta" in line and "run `dualwrite init`" in line, line
    first = runner.invoke(main, ["init", *connection_args(settings)])
    assert first.exit_code == 0, first.output
    assert first.output.count("_dw_outbox") == 2 and "memory_items" not in first.output
    assert _tables_in(settings.pg_schema) == set()  # nothing of ours in the application's schema
    assert _tables_in(settings.state_schema) == {"_dw_outbox", "_dw_versions", "_dw_meta", "_dw_ranges"}
    second = runner.invoke(main, ["init", *connection_args(settings)])
    assert second.exit_code == 0 and second.output.count("already complete") == 2, second.output
    created = runner.invoke(main, ["init", *connection_args(settings), *APP, "--create-tables"])
    assert created.exit_code == 0 and "created 16 table(s)" in created.output, created.output
    assert len(_tables_in(settings.pg_schema)) == 16
    create_schema(sqlite_engine(settings.sqlite_url), app_tables().tables(), primary=True)  # the app's own file
    doctor = runner.invoke(main, ["doctor", *connection_args(settings), *APP])
    assert doctor.exit_code == 0, doctor.output
    assert [line.split()[:2] for line in doctor.output.splitlines()] == [
        ["sqlite", "ok"],
        ["postgres", "ok"],
        ["timezone", "ok"],
        ["schema", "ok"],
        ["bookkeeping", "ok"],
        ["phase", "ok"],
        ["redis", "ok"],
    ]
    assert "phase       ok  sqlite (epoch 0, none recorded yet; redis copy -)" in doctor.output, doctor.output


def test_doctor_answers_while_the_application_holds_the_write_lock(settings) -> None:  # type: ignore[no-untyped-def]
    """The operator runs doctor beside a live application: looking at the tables must not queue for
    SQLite's write lock (a writer's open transaction held it for the whole busy timeout before)."""
    runner = CliRunner()
    assert runner.invoke(main, ["init", *connection_args(settings), *APP, "--create-tables"]).exit_code == 0
    create_schema(sqlite_engine(settings.sqlite_url), app_tables().tables(), primary=True)
    writer = sqlite3.connect(settings.sqlite_path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # an application transaction, open while doctor runs
    try:
        doctor = runner.invoke(main, ["doctor", *connection_args(settings), *APP])
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    lines = {line.split()[0]: line for line in doctor.output.splitlines()}
    assert " ok " in lines["schema"] and " ok " in lines["bookkeeping"], doctor.output


def test_doctor_reports_a_file_locked_after_its_first_look_as_failing_lines(settings) -> None:  # type: ignore[no-untyped-def]
    """A writer may take the file exclusively between doctor's sqlite line and its later looks (a large write
    transaction in a rollback-journal file keeps readers out): those lines fail, naming it, and the other
    checks still run. The application's Tables here takes that lock when doctor asks for its tables."""
    held: list[sqlite3.Connection] = []

    class LockingTables(Tables):
        def tables(self) -> list[Any]:
            writer = sqlite3.connect(settings.sqlite_path, isolation_level=None)
            writer.execute("BEGIN EXCLUSIVE")  # the file is in rollback-journal mode: readers wait for it
            held.append(writer)
            return super().tables()

    app = sqlite3.connect(settings.sqlite_path)
    app.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    app.close()
    md = MetaData()
    Table("notes", md, Column("id", Integer, primary_key=True), Column("body", Text))
    try:
        lines = {name: (ok, line) for name, ok, line in run_checks(settings, LockingTables.of(md))}
    finally:
        for writer in held:
            writer.close()
    assert held and lines["sqlite"][0] and lines["postgres"][0] and lines["redis"][0], lines
    for name in ("schema", "bookkeeping"):
        ok, line = lines[name]
        assert not ok and "database is locked" in line and "holds the file exclusively" in line, lines


def test_doctor_reports_the_phase_and_records_that_differ(settings) -> None:  # type: ignore[no-untyped-def]
    """The phase every process follows, and a phase change recorded on one database only (its write to
    the other failed): the processes follow the newer record, the operator must bring the other level."""
    runner = CliRunner()
    assert runner.invoke(main, ["init", *connection_args(settings)]).exit_code == 0
    assert runner.invoke(main, ["phase", "dual_write", *connection_args(settings)]).exit_code == 0
    doctor = runner.invoke(main, ["doctor", *connection_args(settings)])
    assert doctor.exit_code == 0, doctor.output
    assert "phase       ok  dual_write (epoch 1; redis copy dual_write@1)" in doctor.output, doctor.output
    engine = create_engine(PG_ADMIN_URL)
    with engine.begin() as conn:  # as if the change had reached SQLite only
        conn.execute(text(f"DELETE FROM \"{settings.state_schema}\"._dw_meta WHERE name IN ('phase', 'phase_epoch')"))
    engine.dispose()
    doctor = runner.invoke(main, ["doctor", *connection_args(settings)])
    assert doctor.exit_code == 1, doctor.output
    line = next(x for x in doctor.output.splitlines() if x.startswith("phase"))
    assert "FAIL dual_write (epoch 1; redis copy dual_write@1): the records differ" in line, line
    assert "(sqlite dual_write@1, postgres none): run the same phase change again" in line, line


def test_doctor_finds_schema_drift_on_either_side(settings) -> None:  # type: ignore[no-untyped-def]
    """A column an app migration added on SQLite that the model lacks would never be captured: say so."""
    runner = CliRunner()
    assert runner.invoke(main, ["init", *connection_args(settings), *APP, "--create-tables"]).exit_code == 0
    create_schema(sqlite_engine(settings.sqlite_url), app_tables().tables(), primary=True)
    with sqlite3.connect(settings.sqlite_path) as conn:
        conn.execute("ALTER TABLE memory_items ADD COLUMN mood TEXT")
    engine = create_engine(PG_ADMIN_URL)
    with engine.begin() as conn:
        conn.execute(text(f'ALTER TABLE "{settings.pg_schema}".archive_records DROP COLUMN payload'))
    engine.dispose()
    doctor = runner.invoke(main, ["doctor", *connection_args(settings), *APP])
    assert doctor.exit_code == 1, doctor.output
    line = next(x for x in doctor.output.splitlines() if x.startswith("schema"))
    assert "FAIL" in line
    assert "sqlite: table 'memory_items' has column(s) mood the model lacks" in line
    assert "postgres: table 'archive_records' lacks column(s) payload" in line


def test_doctor_reports_each_failure_on_one_line(tmp_path) -> None:
    result = CliRunner().invoke(
        main,
        [
            "doctor",
            "--sqlite",
            str(tmp_path / "missing.db"),
            "--postgres",
            "postgresql://u:hunter2@127.0.0.1:1/db",
            "--redis",
            "redis://127.0.0.1:1/0",
            *APP,
        ],
    )
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert len(lines) == 4 and all("FAIL" in line for line in lines)
    assert "hunter2" not in result.output and "***" in result.output


def test_config_error_is_one_line_exit_2_without_traceback() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "dualwrite", "init", "--postgres", "postgresql://a:hunter2@h:x/db"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: --postgres") and "Traceback" not in proc.stderr
    assert "hunter2" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_every_role_registers_its_commands() -> None:
    """Every command module is wired into the one `dualwrite` group."""
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for name in ("init", "doctor", "phase", "backfill", "migrate", "verify", "shadow", "cutover", "demo", "bench"):
        assert f"  {name} " in result.output, name


def test_migrate_and_bench_usage_errors_exit_2(tmp_path) -> None:  # type: ignore[no-untyped-def]
    missing = tmp_path / "nope.db"
    result = CliRunner().invoke(main, ["migrate", "--sqlite", str(missing), "--postgres", PG_ADMIN_URL])
    assert result.exit_code == 2, result.output
    assert "nope.db" in result.output
    result = CliRunner().invoke(main, ["bench", "--sections", "bogus"])
    assert result.exit_code == 2
