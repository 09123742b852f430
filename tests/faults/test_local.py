"""Local faults: the SQLite file locked by another writer (6) and a full disk under the reject file (7)."""

from __future__ import annotations

import errno
import json
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import insert, text
from sqlalchemy.exc import OperationalError

from dualwrite.backfill import checkpoint as ckpt
from dualwrite.backfill.copier import Copier
from dualwrite.backfill.rejects import RejectWriter
from dualwrite.bookkeeping import outbox
from dualwrite.engines import sqlite_engine
from dualwrite.settings import Settings
from dualwrite.testing import prepared_writer
from dualwrite.verify.verifier import verify_tables
from tests.core.support import TABLES, catalog, items, row, snapshot
from tests.faults.conftest import SEEDS_AND_SOAK, Collector, PrivatePostgres, heal_and_verify
from tests.faults.workload import running_workload


def _hold_exclusive(path: str, seconds: float, locked: threading.Event) -> threading.Thread:
    def hold() -> None:
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        locked.set()
        time.sleep(seconds)
        other.execute("COMMIT")
        other.close()

    th = threading.Thread(target=hold, daemon=True)
    th.start()
    assert locked.wait(5)
    return th


def _outbox_len(engine) -> int:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM {outbox.name}")).scalar())


# -- (6) SQLite locked by another writer -----------------------------------------------------------------
@pytest.mark.parametrize("seed", SEEDS_AND_SOAK)
def test_sqlite_exclusive_lock_waits_then_succeeds(
    fsettings: Settings, pg: PrivatePostgres, collector: Collector, seed: int
) -> None:
    with running_workload(fsettings, seed, 10) as (dw, wl):
        hold = 0.5 + seed * 0.25
        th = _hold_exclusive(str(fsettings.sqlite_path), hold, threading.Event())
        t = time.monotonic()
        during = wl.run(3)  # waits for the lock (busy timeout 10 s), then succeeds
        waited = time.monotonic() - t
        th.join()
        assert waited >= hold * 0.8
        t0 = time.monotonic()
        out = heal_and_verify(dw, TABLES, since=t0)
        # each fault records its own row through the shared collector.healed: alike in shape, other facts
        collector.healed(
            "SQLite held by BEGIN EXCLUSIVE (< busy timeout)",
            out,
            rows_during_fault=during,
            recovery_seconds=waited,
            note="writes wait for the lock, then succeed",
        )


@pytest.mark.parametrize("seed", SEEDS_AND_SOAK)
def test_sqlite_exclusive_lock_past_busy_timeout_fails_cleanly(
    fsettings: Settings, pg: PrivatePostgres, collector: Collector, seed: int
) -> None:
    with running_workload(fsettings, seed, 10) as (dw, wl):
        dw.backends.sqlite.dispose()
        dw.backends.sqlite = sqlite_engine(fsettings.sqlite_url, busy_ms=200)  # a short busy timeout for this test
        before = (
            snapshot(dw.backends.sqlite_read),
            snapshot(dw.backends.postgres),
            _outbox_len(dw.backends.sqlite_read),
        )
        th = _hold_exclusive(str(fsettings.sqlite_path), 1.2, threading.Event())
        with pytest.raises(OperationalError, match="database is locked"):
            dw.execute(insert(items).values(row(10_000 + seed, 1)))
        th.join()
        # nothing half-written: neither side nor the outbox changed
        assert (
            snapshot(dw.backends.sqlite_read),
            snapshot(dw.backends.postgres),
            _outbox_len(dw.backends.sqlite_read),
        ) == before
        t0 = time.monotonic()
        wl.run(3)  # the lock is gone: writes go on
        out = heal_and_verify(dw, TABLES, since=t0)
        # each fault records its own row through the shared collector.healed: alike in shape, other facts
        collector.healed(
            "SQLite held by BEGIN EXCLUSIVE (> busy timeout)",
            out,
            rows_during_fault=1,
            note="write fails with 'database is locked'; nothing half-written",
        )


# -- (7) disk full under the reject file -------------------------------------------------------------------
@pytest.mark.parametrize("seed", SEEDS_AND_SOAK)
def test_reject_file_disk_full(
    fsettings: Settings, pg: PrivatePostgres, collector: Collector, tmp_path: Path, seed: int
) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full")
    with prepared_writer(fsettings, catalog(), phase="sqlite") as dw:
        bad_id = 10 + seed
        rows = [row(i, i) for i in range(40)]
        rows[bad_id]["name"] = "nul\x00byte"  # Postgres refuses NUL in text: the row must be rejected
        dw.execute(insert(items).values(rows))
        full = RejectWriter("/dev/full")
        with pytest.raises(OSError) as err:
            Copier.for_backends(dw.backends, chunk_size=8, rejects=full).copy_tables(list(TABLES))
        assert err.value.errno == errno.ENOSPC  # a clear error, not a silent drop
        with dw.backends.postgres.connect() as conn:
            cp = ckpt.load(conn, "items")
        assert cp.rows_copied == (bad_id // 8) * 8  # the chunk holding the reject was not committed
        t0 = time.monotonic()
        good = tmp_path / "rejects.jsonl"
        Copier.for_backends(dw.backends, chunk_size=8, rejects=RejectWriter(good)).copy_tables(list(TABLES))
        lines = [json.loads(x) for x in good.read_text().splitlines()]
        assert [(r["table"], r["column"]) for r in lines] == [("items", "name")]
        with dw.backends.postgres.connect() as conn:
            cp = ckpt.load(conn, "items")
        assert (cp.rows_copied, cp.rows_rejected, cp.status) == (39, 1, "done")
        report = verify_tables(list(TABLES), dw.backends.sqlite_read, dw.backends.postgres)
        counts = {t.table: t.counts() for t in report.tables}
        assert counts["items"] == {"missing": 1, "extra": 0, "differing": 0}  # exactly the rejected row
        assert counts["pairs"] == {"missing": 0, "extra": 0, "differing": 0}
        collector.case(
            "reject file on a full disk (/dev/full)",
            rows_during_fault=40,
            rows_lost=0,
            rows_diverged=0,
            recovery_seconds=time.monotonic() - t0,
            note="OSError ENOSPC raised, chunk rolled back; on rerun 1 row rejected to the file (explained)",
        )
