"""`dualwrite doctor` as an operator runs it beside a live application: its own process, while writer
processes (started separately) write through the adapter, at each phase of a cutover — the application's
file before `dualwrite init`, phase sqlite after it, dual_write beside `dualwrite backfill run --daemon`
(replaying the writers' changes once it copied), postgres_reads — and each time again while the
application holds a long write transaction (BEGIN IMMEDIATE) on its SQLite file, the writers queueing
behind it.

What it proves, read from doctor's lines and exit codes and from the file itself:
- doctor answers without waiting, even while the write lock is held: its process sleeps under a fifth of
  SQLite's busy timeout (a doctor that queued for the lock sleeps all of it: 10.1 s measured with the
  doctor of before 0f91653), and says every line ok;
- exit 1 with exactly the failing lines (schema, bookkeeping) before init, exit 0 with every line ok
  after; exit 2 on a configuration error; the sqlite line gives the file's own journal mode (delete as
  the application made it, wal once dualwrite writes it);
- a file held exclusively (a large write transaction in the rollback journal before init): the sqlite
  line says so at once, exit 1;
- the phase line names the phase of record and its epoch, with Redis' copy agreeing;
- doctor leaves the user's file as it was: the same schema and journal mode (before init, the same bytes)
  and nothing created on Postgres;
- `--report FILE` holds the same checks as the lines, as JSON;
- the writers commit while doctor runs, none of their writes fails, and at the end every write they
  acknowledged is on both databases, exactly.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect

from dualwrite.cutover.gate import GateConfig, backfill_complete, replay_lag
from dualwrite.engines import SQLITE_BUSY_MS, Backends
from dualwrite.settings import Settings
from tests.conftest import PG_ADMIN_URL, connection_args
from tests.userapp.fleet import ROOT, Fleet, env
from tests.userapp.models import Base
from tests.userapp.operator import METADATA, dualwrite, move, ok, start_daemon, stop_all, wait
from tests.userapp.writer import tables

BUSY_S = SQLITE_BUSY_MS / 1000  # what a writer (and a doctor that queued for the lock) waits at most
# Doctor's waiting, lock held or not: the time its process slept (off a CPU and not queued for one, from
# /proc/PID/schedstat), which is where a doctor queued for the write lock spends the whole busy timeout.
# Wall time is not asserted: on a shared 2-core box it is the box's load (1-12 s measured here at load
# 2-17, while doctor slept under 0.1 s of it).
BOUND_S = BUSY_S / 5
# The application's long write transaction, while writers queue behind it: at least HOLD_MIN_S, ended
# when doctor answered, at most HOLD_S (the writers' BUSY_S must not run out).
HOLD_MIN_S, HOLD_S = BUSY_S * 0.3, BUSY_S * 0.6
LINES = ["sqlite", "postgres", "timezone", "schema", "bookkeeping", "phase", "redis"]


@dataclass
class Doctor:
    """One `dualwrite doctor` run: exit code, its lines (name -> (ok, text)), wall and sleeping seconds."""

    returncode: int
    output: str
    lines: dict[str, tuple[bool, str]]
    wall: float
    slept: float

    def failing(self) -> list[str]:
        return [name for name, (passed, _) in self.lines.items() if not passed]


def _doctor(conn: list[str], *more: str) -> Doctor:
    """`dualwrite doctor` in its own process (as operator.dualwrite runs it), watched while it runs."""
    start = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "dualwrite", "doctor", *conn, *METADATA, *more],
        cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    on_cpu = queued = 0.0
    while proc.poll() is None:
        try:  # nanoseconds on a CPU, waiting for one, and time slices
            run_ns, wait_ns, _ = map(int, Path(f"/proc/{proc.pid}/schedstat").read_text().split())
            on_cpu, queued = run_ns / 1e9, wait_ns / 1e9
        except (FileNotFoundError, ProcessLookupError, ValueError):  # exiting meanwhile
            pass
        time.sleep(0.02)
    wall = time.monotonic() - start
    output = proc.communicate()[0]
    lines = {}
    for line in output.splitlines():
        if line == "next:":  # the commands to run next (operator.printed_steps), after the checks
            break
        name, status, text = line.split(None, 2)
        lines[name] = (status == "ok", text)
    return Doctor(proc.returncode, output, lines, wall, wall - on_cpu - queued)


def _prompt(doc: Doctor) -> Doctor:
    assert doc.slept < BOUND_S, f"doctor slept {doc.slept:.1f}s of {doc.wall:.1f}s\n{doc.output}"
    return doc


def _reported(conn: list[str], report: Path) -> Doctor:
    """A doctor run with --report: the file holds what the lines said (ok is the exit code's)."""
    doc = _prompt(_doctor(conn, "--report", str(report)))
    checks = [{"name": name, "ok": passed, "line": text} for name, (passed, text) in doc.lines.items()]
    out = doc.output.splitlines()
    steps = [line.strip() for line in out[out.index("next:") + 1 :]] if "next:" in out else []
    assert json.loads(report.read_text()) == {"ok": doc.returncode == 0, "checks": checks, "next_steps": steps}, doc
    return doc


def _healthy(conn: list[str], journal: str, phase: str) -> Doctor:
    """A doctor run with every line ok, the file's journal mode and the phase (`name@epoch`) as they are."""
    doc = _prompt(_doctor(conn))
    assert doc.returncode == 0 and list(doc.lines) == LINES and not doc.failing(), doc.output
    assert f"journal {journal})" in doc.lines["sqlite"][1], doc.lines["sqlite"]
    name, epoch = phase.split("@")
    want = f"{name} (epoch {epoch}; redis copy {phase})" if epoch != "0" else "sqlite (epoch 0, none recorded yet"
    assert doc.lines["phase"][1].startswith(want), doc.lines["phase"]
    return doc


def _shape(path: Path) -> tuple[str, list[tuple[str, ...]]]:
    """The file's journal mode and schema, as SQLite itself reports them."""
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        mode = db.execute("PRAGMA journal_mode").fetchone()[0]
        return mode, db.execute("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name").fetchall()


def _last_seq(path: Path) -> int:
    """The outbox's high-water mark: one step per change the writers committed."""
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        return int(db.execute("SELECT value FROM _dw_meta WHERE name = 'last_seq'").fetchone()[0])


def _pg_tables(settings: Settings) -> dict[str, list[str]]:
    engine = create_engine(PG_ADMIN_URL)
    try:
        insp = inspect(engine)
        schemas = set(insp.get_schema_names())
        return {
            s: sorted(insp.get_table_names(schema=s))
            for s in (settings.pg_schema, settings.state_schema)
            if s in schemas
        }
    finally:
        engine.dispose()


@contextmanager
def _write_lock_held(path: Path, at_most: float | None = HOLD_S, *, large: bool = False) -> Iterator[None]:
    """The application inside a long write transaction, in a thread: BEGIN IMMEDIATE and a change of its
    own, rolled back when the block ends (HOLD_MIN_S after it began at the soonest) or after `at_most`
    seconds, if sooner. A doctor that queued behind it would sleep until one of them (None: until the
    block ends, its own busy timeout). `large`: 8 MB written, more than SQLite's page cache, so that in a
    rollback journal it spills and holds the file exclusively."""
    taken, release = threading.Event(), threading.Event()

    def hold() -> None:
        with closing(sqlite3.connect(path, isolation_level=None, timeout=BUSY_S)) as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("CREATE TABLE app_scratch (x)")
                if large:
                    db.executemany("INSERT INTO app_scratch VALUES (?)", [(os.urandom(1 << 20),)] * 8)
                taken.set()
                release.wait(at_most)
            finally:
                db.execute("ROLLBACK")

    holder = threading.Thread(target=hold, name="app-write-transaction")
    holder.start()
    try:
        assert taken.wait(BUSY_S), "the test's write transaction did not begin"
        began = time.monotonic()
        yield
        time.sleep(max(0.0, HOLD_MIN_S - (time.monotonic() - began)))
    finally:
        release.set()
        holder.join()


def _doctor_under_lock(conn: list[str], path: Path, journal: str, phase: str, fleet: Fleet) -> None:
    """Doctor while the write lock is held and the writers queue behind it: it answers, healthy, without
    waiting for the lock; the writers go on after the transaction."""
    before = _shape(path)
    with _write_lock_held(path):
        _healthy(conn, journal, phase)
        queued = fleet.committed()
    fleet.wait_committed(1, more_than=queued, timeout=30)
    assert _shape(path) == before


def _doctor_beside_writers(conn: list[str], path: Path, journal: str, phase: str) -> None:
    """Doctor while the writers commit: healthy, the file unchanged in shape, and commits went on meanwhile."""
    before, seq = _shape(path), _last_seq(path)
    _healthy(conn, journal, phase)
    assert _shape(path) == before and _last_seq(path) > seq


@pytest.mark.timeout(300)  # about 40 s on a quiet machine
def test_doctor_answers_beside_live_writers_and_a_held_write_lock_at_each_phase(  # type: ignore[no-untyped-def]
    settings, tmp_path: Path
) -> None:
    path = settings.sqlite_path
    app_db = create_engine(settings.sqlite_url)  # the application's own engine: its file as it makes it
    Base.metadata.create_all(app_db)
    app_db.dispose()
    conn = connection_args(settings)
    backends = Backends(settings)
    fleet = Fleet(tmp_path)
    daemon = None
    try:
        # Before init: the application's file, untouched; dualwrite's tables missing on both sides.
        digest, shape, pg = hashlib.sha256(path.read_bytes()).hexdigest(), _shape(path), _pg_tables(settings)
        assert shape[0] == "delete", shape
        doc = _reported(conn, tmp_path / "doctor-before-init.json")
        assert doc.returncode == 1 and list(doc.lines) == [n for n in LINES if n != "phase"], doc.output
        assert doc.failing() == ["schema", "bookkeeping"], doc.output
        assert "journal delete)" in doc.lines["sqlite"][1], doc.output
        assert "run `dualwrite init`" in doc.lines["bookkeeping"][1], doc.output
        assert "does not exist (run `dualwrite init --create-tables`)" in doc.lines["schema"][1], doc.output
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest and _pg_tables(settings) == pg
        with _write_lock_held(path, None):  # the application's own write, no writer of ours to queue
            doc = _prompt(_doctor(conn))
            assert doc.returncode == 1 and doc.failing() == ["schema", "bookkeeping"], doc.output
            assert "journal delete)" in doc.lines["sqlite"][1], doc.output
        with _write_lock_held(path, None, large=True):  # the file held exclusively: doctor says so, promptly
            doc = _prompt(_doctor(conn))
            assert doc.returncode == 1 and doc.failing() == ["sqlite", "schema"], doc.output
            assert "database is locked" in doc.lines["sqlite"][1], doc.output
            assert "run doctor again after it" in doc.lines["sqlite"][1], doc.output
        assert _shape(path) == shape and _pg_tables(settings) == pg
        bad = dualwrite("doctor", *conn, "--metadata", "tests.userapp.no_such_module:tables", timeout=60)
        assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, (bad.stdout, bad.stderr)

        ok(dualwrite("init", *conn, *METADATA, "--create-tables"))
        fleet.start(settings, count=2, rate=10, population=20, documents=0)  # light: doctor is timed beside them
        fleet.wait_committed(5)
        assert _shape(path)[0] == "wal"  # the writers' engines write it in WAL
        _doctor_beside_writers(conn, path, "wal", "sqlite@0")
        _doctor_under_lock(conn, path, "wal", "sqlite@0", fleet)

        move(conn, tmp_path, "dual_write", "cutover", "flip")
        daemon = start_daemon(settings, tmp_path, "--chunk-size", "50")
        app = tables()
        wait("every table copied", lambda: backfill_complete(backends, app, GateConfig()).ok, 60, 0.3)
        _doctor_beside_writers(conn, path, "wal", "dual_write@1")  # the daemon replays the writers' changes meanwhile
        _doctor_under_lock(conn, path, "wal", "dual_write@1", fleet)

        for phase in ("shadow", "postgres_reads"):  # the gate's own checks are other tests' subject
            ok(dualwrite("phase", phase, *conn, "--reason", "doctor drill"))
        fleet.wait_committed(5, more_than=fleet.committed())
        _doctor_beside_writers(conn, path, "wal", "postgres_reads@3")
        _doctor_under_lock(conn, path, "wal", "postgres_reads@3", fleet)
        healthy = _reported(conn, tmp_path / "doctor.json")
        assert healthy.returncode == 0 and list(healthy.lines) == LINES and not healthy.failing(), healthy.output
        fleet.check_alive()
        fleet.stop()

        assert fleet.errors() == {}, fleet.errors()
        assert {"sqlite", "dual_write", "postgres_reads"} <= {p for s in fleet.stats().values() for p in s["phases"]}
        wait("the replay to catch up", lambda: replay_lag(backends, app, GateConfig(max_replay_lag=0)).ok, 60, 0.3)
        fleet.assert_agree({"postgres": backends.postgres, "sqlite": backends.sqlite_read}, truth=backends.postgres)
    finally:
        rc = stop_all(fleet, daemon, backends)
    assert rc == 0, (tmp_path / "backfill.stderr").read_text()[-3000:]
