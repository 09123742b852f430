"""The whole cutover of an application dualwrite did not write (tests.userapp), as its users run it: three
writer processes, started separately, write through the adapter (ORM and Core, with shadow reads) while
the operator's CLI, in processes of its own, moves sqlite -> dual_write -> backfill -> shadow -> verify
(a full verify, then `verify --incremental` of what the writers changed since, which the gate accepts)
-> postgres_reads -> postgres_primary -> postgres. At the end the writers' logs, SQLite and Postgres agree
row for row, and no write failed at any flip.

The primary switch must move every sequence whichever process runs the flip: the bug this issue opened
with was `dualwrite cutover flip` (another process than the application's) leaving Postgres' sequences
at their start, so every insert after postgres_primary failed with `duplicate key value violates unique
constraint`. Here the writers keep inserting rows with database-generated ids (customers, documents)
across that flip and after it, and their ids continue above every id SQLite handed out.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from dualwrite.engines import Backends, sqlite_engine
from dualwrite.redis_keys import read_shadow_counts, stream_key
from tests.conftest import connection_args
from tests.userapp.compare import differences
from tests.userapp.fleet import Fleet
from tests.userapp.models import Base, Customer, Document
from tests.userapp.operator import METADATA, dualwrite, ok, start_daemon, stop_daemon, wait
from tests.userapp.state import Schema, State

# Per writer: a steady rate the gate's outbox_drained can pass under without the write fence (issue 15).
RATE = 12


STEPS: list[tuple[str, float]] = []


def step(name: str) -> None:
    """Note when a step of the cutover ends (printed at the end: where the test's time goes)."""
    STEPS.append((name, time.monotonic()))


def flip(conn: list[str], to: str, deadline: float = 60) -> str:
    out = ok(dualwrite("cutover", "flip", *conn, *METADATA, "--postpone", "--deadline", str(deadline), "--poll", "0.2"))
    assert f"-> {to}" in out, out
    step(f"flip {to} ({out.count('waiting')} waits)")
    return out


def max_id(engine, model) -> int:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return conn.execute(select(func.max(model.id))).scalar() or 0


def test_three_writer_processes_through_the_whole_cutover_from_the_cli(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cutover_under_writers(settings, tmp_path, rate=RATE, per_phase=10, documents=0.5)


@pytest.mark.soak
def test_soak_three_writer_processes_through_the_whole_cutover(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The same at a higher rate with a few hundred transactions per writer in every phase."""
    cutover_under_writers(settings, tmp_path, rate=40, per_phase=300, documents=1.0)


def cutover_under_writers(settings, tmp_path: Path, *, rate: float, per_phase: int, documents: float) -> None:  # type: ignore[no-untyped-def]
    """The whole cutover from the CLI while three writer processes write at `rate` transactions per second
    each, `per_phase` transactions per writer in each phase (twice that after postgres_primary)."""
    conn = connection_args(settings)
    app_db = sqlite_engine(settings.sqlite_url)
    Base.metadata.create_all(app_db)  # the application's own schema, made by the application
    app_db.dispose()
    STEPS[:] = [("start", time.monotonic())]
    out = ok(dualwrite("init", *conn, *METADATA, "--create-tables"))
    assert "created" in out, out
    step("init")
    backends = Backends(settings)
    fleet = Fleet(tmp_path)
    daemon: subprocess.Popen[bytes] | None = None
    try:
        # Three application processes, each with its own relay and shadow reader, in phase sqlite.
        fleet.start(settings, count=3, rate=rate, reads=0.3, shadow=100, population=25, documents=documents)
        fleet.wait_committed(per_phase, timeout=60 + per_phase / rate)  # history that predates the copy
        step("writers started")

        flip(conn, "dual_write")
        daemon = start_daemon(settings, tmp_path, "--chunk-size", "100", "--rejects", str(tmp_path / "rejects.jsonl"))
        flip(conn, "shadow")  # waits for every table's copy
        at = fleet.committed()
        fleet.wait_committed(
            per_phase, more_than=at, timeout=60 + per_phase / rate
        )  # shadow reads compare SQLite with Postgres meanwhile
        step("writes in shadow")
        counts = read_shadow_counts(backends.redis, settings.namespace)
        assert counts.get("match", 0) > 0 and counts.get("mismatch", 0) == 0, counts

        report = tmp_path / "verify.json"
        ok(dualwrite("verify", *conn, *METADATA, "--report", str(report)))
        step("verify")
        full = json.loads(report.read_text())
        assert full["clean"] and full["mode"] == "full"
        # The writers go on; the operator re-verifies only what they changed since, and the gate takes it.
        at = fleet.committed()
        fleet.wait_committed(per_phase // 2, more_than=at, timeout=60 + per_phase / rate)
        ok(dualwrite("verify", *conn, *METADATA, "--incremental", "--report", str(report)))
        step("verify --incremental")
        inc = json.loads(report.read_text())
        assert inc["clean"] and inc["mode"] == "incremental" and inc["fallback"] is None, inc
        assert inc["touched"] > 0 and inc["base"] == full["at"], inc
        out = flip(conn, "postgres_reads")
        assert "incremental:" in out and full["at"] in out, out  # the gate names the full verify it rests on
        at = fleet.committed()
        fleet.wait_committed(per_phase, more_than=at, timeout=60 + per_phase / rate)

        sqlite_top = {m.__name__: max_id(backends.sqlite_read, m) for m in (Customer, Document)}
        flip(conn, "postgres_primary")
        # only a transaction begun once the flip returned surely ran on Postgres: until the fence moved the
        # primary, writes went on on SQLite (which hands a deleted top id out again)
        flipped_at = time.time()
        at = fleet.committed()
        fleet.wait_committed(
            2 * per_phase, more_than=at, timeout=60 + 2 * per_phase / rate
        )  # inserts now get their ids from Postgres' sequences
        flip(conn, "postgres")
        at = fleet.committed()
        fleet.wait_committed(per_phase, more_than=at, timeout=60 + per_phase / rate)
        fleet.stop()
        step("writers stopped")
        assert fleet.errors() == {}, fleet.errors()  # no write failed, at any flip
        assert fleet.total("read_errors") == 0 and fleet.total("read_disagreements") == 0, fleet.stats()

        # Every transaction the writers committed is in both databases, exactly; SQLite gets the last
        # phase's changes from the replay (the daemon), so wait for it to catch up.
        state = fleet.state(truth=backends.postgres)
        engines = {"postgres": backends.postgres, "sqlite": backends.sqlite_read}
        assert differences(state, backends.postgres, "postgres") == []
        try:
            wait("the replay to bring SQLite up to date", lambda: not differences(state, backends.sqlite_read), 90, 0.5)
        except AssertionError as exc:  # say why: what differs, where the replay stands, what it logged
            groups = backends.redis.xinfo_groups(stream_key(settings.namespace))
            dead = backends.redis.xlen(f"{settings.namespace}:changes:dead")
            log = (tmp_path / "backfill.stderr").read_text()[-2000:]
            raise AssertionError(
                f"{exc}: {differences(state, backends.sqlite_read)[:10]}; groups {groups}; dead letters {dead}; {log}"
            ) from None
        assert [d for label, e in engines.items() for d in differences(state, e, label)] == []
        step("compared")

        # Rows inserted after postgres_primary got ids from Postgres' sequences, above every SQLite id.
        later = _inserted_after(fleet, state, flipped_at)
        assert later["customers"] and min(later["customers"]) > sqlite_top["Customer"], (later, sqlite_top)
        assert all(i > sqlite_top["Document"] for i in later["documents"]), (later, sqlite_top)
        phases = {p for s in fleet.stats().values() for p in s["phases"]}
        assert {"sqlite", "dual_write", "shadow", "postgres_reads", "postgres_primary", "postgres"} <= phases
    finally:
        print("\n".join(f"{name:28} {t - STEPS[0][1]:6.1f}s" for name, t in STEPS))
        from dualwrite.shadow.reader import read_mismatches

        for m in read_mismatches(backends.redis, settings.namespace, 5):
            print("MISMATCH", m["query"], m["rows"], m["diff"][:3000])
        fleet.kill()
        rc = stop_daemon(daemon)
        backfill_log = (tmp_path / "backfill.stderr").read_text() if daemon is not None else ""
        backends.close()
    assert rc == 0, backfill_log[-3000:]


def _inserted_after(fleet: Fleet, state: State, t: float) -> dict[str, list[int]]:
    """Ids of customers and documents the writers inserted in transactions begun after `t`."""
    from tests.userapp.state import read_log

    schema = Schema.of(Base.metadata)
    out: dict[str, list[int]] = {"customers": [], "documents": []}
    for path in fleet.logs():
        for tx in read_log(path, schema):
            if tx.status == "committed" and tx.t0 > t:
                for ch in tx.changes:
                    if ch.op == "insert" and ch.table in out:
                        out[ch.table].append(ch.key["id"])
    return out


def test_a_flip_from_another_process_moves_sequences_past_ids_still_in_flight(settings) -> None:  # type: ignore[no-untyped-def]
    """Rows SQLite committed just before the switch may not have reached Postgres yet (their inline apply
    or replay is on its way): the next Postgres id must still be above them, not above Postgres' max."""
    from sqlalchemy import insert

    from dualwrite.testing import prepared_writer
    from tests.userapp.workload import Workload
    from tests.userapp.writer import tables

    with prepared_writer(settings, tables(), phase="postgres_reads") as dw:
        work = Workload(dw, "t", 1, State(Schema.of(Base.metadata)))
        customers = Customer.__table__
        ids = [dw.execute(insert(customers).values(**work._customer_values()))[0]["id"] for _ in range(3)]
        with dw.backends.sqlite.begin() as conn:  # committed on SQLite, not applied to Postgres (yet)
            for _ in range(2):
                conn.execute(insert(customers).values(**work._customer_values()))
        backends = dw.backends
        assert (
            ids == [1, 2, 3]
            and max_id(backends.postgres, Customer) == 3
            and max_id(backends.sqlite_read, Customer) == 5
        )
        out = ok(dualwrite("cutover", "flip", *connection_args(settings), *METADATA, "--force", "--reason", "drill"))
        assert "postgres_reads -> postgres_primary" in out, out
        (row,) = dw.execute(insert(customers).values(**work._customer_values()))  # now on Postgres
        assert row["id"] == 6
        assert max_id(backends.sqlite_read, Customer) == 6 and max_id(backends.postgres, Customer) == 6
