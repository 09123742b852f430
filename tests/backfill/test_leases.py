"""Several backfill workers share one table through leases: every range is applied exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from dualwrite.backfill import checkpoint as ckpt
from dualwrite.backfill.copier import Copier
from dualwrite.backfill.leases import LeaseBook, LeaseLost, read_range
from dualwrite.backfill.throttle import TokenBucket
from dualwrite.bookkeeping import versions
from tests.backfill.support import TABLES, accounts, assert_equal, seed

ROOT = Path(__file__).resolve().parents[2]


PHASE = "dual_write"  # the conftest's dw fixture


def leased_copier(dw, chunk_size: int, **kw) -> Copier:  # type: ignore[no-untyped-def]
    return Copier.for_backends(dw.backends, chunk_size=chunk_size, leases=LeaseBook(dw.backends.postgres, **kw))


def test_two_workers_copy_each_range_once(dw) -> None:  # type: ignore[no-untyped-def]
    n = 1200
    seed(dw, n)
    copiers = [leased_copier(dw, 37) for _ in range(2)]
    start = threading.Barrier(2)
    reports: dict[int, list] = {}

    def work(i: int) -> None:
        start.wait()
        reports[i] = copiers[i].copy_tables(TABLES)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert set(reports) == {0, 1}
    for k, table in enumerate(TABLES):
        mine = [reports[i][k] for i in range(2)]
        assert all(r.status == "done" and r.chunks > 0 for r in mine), mine  # both workers did share the work
        assert sum(r.rows_read for r in mine) == n  # no range read twice...
        assert sum(r.rows_applied for r in mine) == n and sum(r.rows_stale for r in mine) == 0  # ...nor applied twice
        assert sum(r.chunks for r in mine) == -(-n // 37)  # every chunk exactly once (the last lease is open-ended)
        with dw.backends.postgres.connect() as conn:
            cp = ckpt.load(conn, table.name)
            assert (cp.status, cp.rows_copied, cp.rows_rejected) == ("done", n, 0)  # totals exact
            assert conn.execute(select(func.count()).select_from(ckpt.leases)).scalar() == 0  # book cleaned up
    assert_equal(dw)
    for c in copiers:
        c.leases.close()


CHILD = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, {root!r})
    from dualwrite.backfill.copier import Copier
    from dualwrite.backfill.leases import LeaseBook
    from dualwrite.backfill.throttle import TokenBucket
    from dualwrite.engines import postgres_engine, sqlite_read_engine
    from tests.backfill.support import accounts

    s = json.loads(sys.argv[1])
    pg = postgres_engine(s["postgres_url"], s["pg_schema"], state_schema=s["state_schema"], replica=True)
    book = LeaseBook(postgres_engine(s["postgres_url"], s["pg_schema"], state_schema=s["state_schema"]), ttl_s=600)
    copier = Copier(sqlite_read_engine(s["sqlite_url"]), pg, chunk_size=20, throttle=TokenBucket(300), leases=book)
    print("START", flush=True)
    copier.copy_tables([accounts])
    print("DONE", flush=True)
    """
)


def test_sigkilled_worker_lease_is_taken_over_at_once(dw, settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    n = 1000
    seed(dw, n)
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(root=str(ROOT)))
    args = json.dumps({k: getattr(settings, k) for k in ("sqlite_url", "postgres_url", "pg_schema", "state_schema")})
    proc = subprocess.Popen([sys.executable, str(script), args], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "START"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _copied(dw) < 100:
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    before = _copied(dw)
    assert 0 < before < n, before
    t0 = time.monotonic()
    (rep,) = leased_copier(dw, 50).copy_tables([accounts])  # the dead worker's lease expires in 600 s
    assert time.monotonic() - t0 < 60
    assert rep.status == "done" and rep.rows_copied == n
    assert rep.rows_read == n - before  # the killed chunk was rolled back and copied once, by the survivor
    assert rep.rows_stale == 0
    assert_equal_table(dw)


def test_expired_lease_is_taken_over_and_late_owner_is_refused(dw) -> None:  # type: ignore[no-untyped-def]
    seed(dw, 100)
    slow, fast = LeaseBook(dw.backends.postgres, ttl_s=0.3), LeaseBook(dw.backends.postgres, ttl_s=60)
    lease = slow.claim(dw.backends.sqlite_read, accounts, 40)
    assert lease is not None and lease.n == 1
    assert fast.claim(dw.backends.sqlite_read, accounts, 40).n == 2  # the slow worker is alive and in time: a new range
    time.sleep(0.4)
    taken = fast.claim(dw.backends.sqlite_read, accounts, 40)
    assert taken == lease  # expired: taken over although its owner is alive
    copier = Copier.for_backends(dw.backends, throttle=TokenBucket(None))
    chunk = read_range(dw.backends.sqlite_read, accounts, None, None if lease.upto is None else (40,))
    assert len(chunk.values) == 40

    def late_save(conn, saved) -> None:  # type: ignore[no-untyped-def]
        slow.complete(conn, lease, saved)

    with pytest.raises(LeaseLost):
        copier.apply_chunk(accounts, chunk, ckpt.Checkpoint(accounts.name), 0, save=late_save)
    with dw.backends.postgres.connect() as conn:  # the late chunk was rolled back: nothing applied, nothing counted
        assert conn.execute(select(func.count()).select_from(versions)).scalar() == 0
        assert ckpt.load(conn, accounts.name).rows_copied == 0
    slow.close()
    fast.close()


def _copied(dw) -> int:  # type: ignore[no-untyped-def]
    with dw.backends.postgres.connect() as conn:
        return ckpt.load(conn, accounts.name).rows_copied


def assert_equal_table(dw) -> None:  # type: ignore[no-untyped-def]
    from tests.backfill.support import snapshot

    assert snapshot(dw.backends.sqlite_read, accounts) == snapshot(dw.backends.postgres, accounts)


def test_leased_workers_resume_an_unleased_checkpoint(dw) -> None:  # type: ignore[no-untyped-def]
    seed(dw, 200)
    (first,) = Copier.for_backends(dw.backends, chunk_size=30).copy_tables([accounts], max_chunks=2)
    assert (first.status, first.rows_copied) == ("copying", 60)
    (rep,) = leased_copier(dw, 50).copy_tables([accounts])
    assert rep.rows_read == 140 and rep.rows_stale == 0  # from the old checkpoint's last key on, nothing twice
    assert (rep.status, rep.rows_copied) == ("done", 200)
    assert_equal_table(dw)
    copier = leased_copier(dw, 50)
    (again,) = copier.copy_tables([accounts])  # done: a further run claims nothing
    assert (again.status, again.chunks, again.rows_read) == ("done", 0, 0)
    copier.leases.close()
