"""`dualwrite backfill reset`: deletes exactly the rows the backfill wrote (live-changed rows and tombstones
stay), clears its progress, asks first, and refuses when deleting would hurt."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from click.testing import CliRunner
from sqlalchemy import delete, func, insert, select, update

from dualwrite.backfill import checkpoint as ckpt
from dualwrite.backfill.copier import Copier
from dualwrite.backfill.leases import LeaseBook
from dualwrite.backfill.throttle import Limits, Throttler
from dualwrite.bookkeeping import versions
from tests.backfill.support import TABLES, account_row, accounts, assert_equal, notes, seed, tags
from tests.conftest import connection_args

PHASE = "dual_write"  # the conftest's dw fixture


def reset(settings, *args: str):  # type: ignore[no-untyped-def]
    from dualwrite.cli.main import main

    return CliRunner().invoke(main, ["backfill", "reset", *connection_args(settings), *args], catch_exceptions=False)


def pg_ids(dw, table=accounts) -> set[int]:  # type: ignore[no-untyped-def]
    with dw.backends.postgres.connect() as conn:
        return set(conn.execute(select(table.c.id)).scalars())


def version_of(dw, key: str) -> int | None:  # type: ignore[no-untyped-def]
    with dw.backends.postgres.connect() as conn:
        return conn.execute(
            select(versions.c.seq).where(versions.c.tbl == accounts.name, versions.c.pk == key)
        ).scalar()


def test_reset_deletes_the_backfill_rows_only_and_a_new_copy_restores(dw, settings) -> None:  # type: ignore[no-untyped-def]
    seed(dw, 100)  # history from before capture: only the backfill brings it over
    dw.execute(delete(notes).where(notes.c.account_id == 7))
    dw.execute(delete(accounts).where(accounts.c.id == 7))  # then a live delete: its seq is every chunk's S
    Copier.for_backends(dw.backends, chunk_size=30, leases=LeaseBook(dw.backends.postgres)).copy_tables(TABLES[:2])
    Copier.for_backends(dw.backends, chunk_size=30).copy_tables(TABLES[2:])  # the unleased path records too
    tombstone = version_of(dw, "[7]")
    with dw.backends.postgres.connect() as conn:
        assert conn.execute(select(func.count()).select_from(ckpt.chunk_versions)).scalar() == 3
        assert set(conn.execute(select(ckpt.chunk_versions.c.seq)).scalars()) == {tombstone}
    # Live writes after the copy: an update, an insert, a delete. They are not the backfill's to remove.
    dw.execute(update(accounts).where(accounts.c.id == 3).values(name="live"))
    dw.execute(insert(accounts).values(account_row(1000)))
    dw.execute(delete(notes).where(notes.c.account_id == 5))
    dw.execute(delete(accounts).where(accounts.c.id == 5))
    assert pg_ids(dw) == (set(range(1, 101)) - {5, 7}) | {1000}

    r = reset(settings)
    assert r.exit_code == 2 and "refusing to reset without --yes" in r.output  # not a terminal: --yes needed
    assert len(pg_ids(dw)) == 99
    r = reset(settings, "--yes")
    assert r.exit_code == 0, r.output
    for line in ("bf_accounts: deleted 97 row(s)", "bf_tags: deleted 100 row(s)", "bf_notes: deleted 98 row(s)"):
        assert line in r.output, r.output
    assert "reset 3 checkpoint(s); deleted 295 row(s) the backfill wrote (1 tombstone(s) kept)" in r.output
    assert pg_ids(dw) == {3, 1000}  # the live update and insert stay
    assert version_of(dw, "[7]") == tombstone  # the tombstone whose seq equals the chunks' S stays
    assert version_of(dw, "[5]") is not None and version_of(dw, "[1]") is None
    assert pg_ids(dw, notes) == set() and ckpt.load_all(dw.backends.postgres) == {}
    with dw.backends.postgres.connect() as conn:
        assert conn.execute(select(func.count()).select_from(ckpt.chunk_versions)).scalar() == 0
        assert conn.execute(select(func.count()).select_from(tags)).scalar() == 0

    Copier.for_backends(dw.backends, chunk_size=30).copy_tables(TABLES)  # the load again, from scratch
    assert_equal(dw)


def test_refusals_and_keep_rows(dw, settings) -> None:  # type: ignore[no-untyped-def]
    seed(dw, 20)
    Copier.for_backends(dw.backends, chunk_size=8).copy_tables(TABLES)
    throttle = Throttler(Limits(), client=dw.backends.redis, namespace=settings.namespace, name="busy-worker")
    throttle.publish()  # a worker is running
    r = reset(settings, "--yes")
    assert r.exit_code == 1 and "busy-worker" in r.output
    throttle.close()
    dw.phases.set("shadow", force=True)
    dw.phases.set("postgres_reads", force=True)
    r = reset(settings, "--yes", "--tables", "bf_accounts")
    assert r.exit_code == 1 and "postgres_reads" in r.output
    assert len(pg_ids(dw)) == 20
    r = reset(settings, "--yes", "--tables", "bf_accounts", "--keep-rows")  # progress only: allowed in any phase
    assert r.exit_code == 0 and "reset 1 checkpoint(s)" in r.output and "deleted" not in r.output
    assert len(pg_ids(dw)) == 20 and set(ckpt.load_all(dw.backends.postgres)) == {"bf_tags", "bf_notes"}


def test_asks_on_a_terminal(dw, settings) -> None:  # type: ignore[no-untyped-def]
    seed(dw, 10)
    Copier.for_backends(dw.backends, chunk_size=8).copy_tables(TABLES)
    out, code = run_on_terminal(settings, "n\n")
    assert "Clear the backfill progress and delete up to 30 row(s) it wrote on Postgres" in out
    assert code == 1 and "Aborted" in out and len(pg_ids(dw)) == 10
    out, code = run_on_terminal(settings, "y\n")
    assert code == 0 and "deleted 30 row(s)" in out, out
    assert pg_ids(dw) == set()


def run_on_terminal(settings, answer: str) -> tuple[str, int]:  # type: ignore[no-untyped-def]
    from tests.terminal import run_on_terminal as on_terminal

    return on_terminal(["backfill", "reset", *connection_args(settings)], answer)


def test_a_sigkilled_worker_does_not_block_reset(dw, settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Its heartbeat entry outlives it in Redis (30 s), but its Postgres session (the lease liveness lock)
    ends with the process: reset goes ahead at once, and status stops listing it."""
    from dualwrite.redis_keys import backfill_worker_key

    seed(dw, 30)
    argv = [sys.executable, "-m", "dualwrite", "backfill", "run", *connection_args(settings)]
    argv += ["--metadata", "tests.backfill.support:md", "--daemon", "--consumer", "doomed"]
    argv += ["--rejects", str(tmp_path / "rej.jsonl")]
    proc = subprocess.Popen(argv, env=dict(os.environ, PYTHONPATH=os.getcwd()), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "replaying" not in str(
            dw.backends.redis.get(backfill_worker_key(settings.namespace, "doomed"))
        ):
            assert proc.poll() is None, proc.communicate()[0]
            time.sleep(0.1)
        r = reset(settings, "--yes")
        assert r.exit_code == 1 and "doomed" in r.output, r.output  # alive: refused
    finally:
        proc.kill()  # SIGKILL: no chance to remove its entry
        proc.wait(timeout=10)
    assert dw.backends.redis.exists(backfill_worker_key(settings.namespace, "doomed")) == 1  # the heartbeat lingers
    t0 = time.monotonic()
    r = reset(settings, "--yes")
    assert r.exit_code == 0 and "reset 3 checkpoint(s)" in r.output, r.output
    assert time.monotonic() - t0 < 10
    assert pg_ids(dw) == set()
    assert dw.backends.redis.exists(backfill_worker_key(settings.namespace, "doomed")) == 0
