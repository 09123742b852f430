"""Chunks in flight on several lanes commit strictly in key order: the checkpoint is always a committed
prefix, a failed chunk takes the later ones (already COPYed, not committed) down with it, and a chunk
whose predecessor is stuck rolls back and retries in order instead of holding its keys."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from sqlalchemy import func, select

from dualwrite.backfill import checkpoint as ckpt
from dualwrite.backfill import lanes as pipeline
from dualwrite.backfill.copier import Copier
from dualwrite.backfill.cursor import decode_key
from tests.backfill.support import accounts, seed, snapshot


class Poisoned(Copier):
    """Chunk containing key `poison` waits until the next chunk has loaded its rows, then fails."""

    poison: int = 0
    next_loaded: threading.Event
    slow_s: float = 0.0

    def load_rows(self, conn, table, columns, values, version):  # type: ignore[no-untyped-def]
        ids = [v[0] for v in values]
        if self.poison in ids:
            assert self.next_loaded.wait(10)  # the later chunk's COPY is done, uncommitted
            time.sleep(self.slow_s)
            if not self.slow_s:
                raise RuntimeError("poisoned chunk")
        result = super().load_rows(conn, table, columns, values, version)
        if ids and ids[0] > self.poison:
            self.next_loaded.set()
        return result


def pg_count(dw) -> int:  # type: ignore[no-untyped-def]
    with dw.backends.postgres.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(accounts)).scalar() or 0)


def test_a_failed_chunk_rolls_back_the_later_ones(dw) -> None:  # type: ignore[no-untyped-def]
    seed(dw, 100)
    # ranges=False: chunks with a version row per key, the path that runs lanes (a ranged table's chunks
    # take its range lock for their whole transaction, one at a time: spans.py)
    copier = Poisoned(dw.backends.sqlite_read, dw.backends.postgres_apply, chunk_size=10, lanes=2, ranges=False)
    copier.poison, copier.next_loaded = 35, threading.Event()
    with pytest.raises(RuntimeError, match="poisoned chunk"):
        copier.copy_tables([accounts])
    cp = ckpt.load_all(dw.backends.postgres)["bf_accounts"]
    assert copier.next_loaded.is_set()  # chunk 41..50 had loaded its rows before 31..40 failed
    assert decode_key(cp.last_key) == (30,) and cp.rows_copied == 30 and pg_count(dw) == 30
    resumed = Copier.for_backends(dw.backends, chunk_size=10, lanes=2).copy_tables([accounts])
    assert resumed[0].rows_copied == 100 and resumed[0].status == "done"
    assert_equal_accounts(dw)


def test_a_stuck_predecessor_makes_the_next_chunk_retry_in_order(dw, monkeypatch, caplog) -> None:  # type: ignore[no-untyped-def]
    seed(dw, 60)
    monkeypatch.setattr(pipeline, "TURN_TIMEOUT_S", 0.2)
    copier = Poisoned(dw.backends.sqlite_read, dw.backends.postgres_apply, chunk_size=10, lanes=3, ranges=False)
    copier.poison, copier.next_loaded, copier.slow_s = 25, threading.Event(), 1.0
    with caplog.at_level(logging.WARNING, logger="dualwrite.backfill.lanes"):
        (rep,) = copier.copy_tables([accounts])
    assert "retrying in order" in caplog.text
    assert (rep.rows_copied, rep.rows_applied, rep.status) == (60, 60, "done")
    assert ckpt.load_all(dw.backends.postgres)["bf_accounts"].rows_copied == 60
    assert_equal_accounts(dw)


@pytest.mark.parametrize("lanes", [1, 2, 4])
def test_lanes_and_max_chunks_leave_a_committed_prefix(dw, lanes) -> None:  # type: ignore[no-untyped-def]
    seed(dw, 95)
    copier = Copier.for_backends(dw.backends, chunk_size=10, lanes=lanes)
    (rep,) = copier.copy_tables([accounts], max_chunks=5)
    cp = ckpt.load_all(dw.backends.postgres)["bf_accounts"]
    assert (rep.chunks, cp.rows_copied, decode_key(cp.last_key), pg_count(dw)) == (5, 50, (50,), 50)
    answers = iter([False, False, False])  # copy_tables' check, then two chunks, then stop
    stop_after = Copier.for_backends(dw.backends, chunk_size=10, lanes=lanes)
    stop_after.should_stop = lambda: next(answers, True)
    stop_after.copy_tables([accounts])
    cp = ckpt.load_all(dw.backends.postgres)["bf_accounts"]
    assert (cp.rows_copied, decode_key(cp.last_key), pg_count(dw)) == (70, (70,), 70)
    (rest,) = Copier.for_backends(dw.backends, chunk_size=10, lanes=lanes).copy_tables([accounts])
    assert rest.status == "done" and rest.rows_copied == 95
    assert_equal_accounts(dw)


def assert_equal_accounts(dw) -> None:  # type: ignore[no-untyped-def]
    assert snapshot(dw.backends.postgres, accounts) == snapshot(dw.backends.sqlite_read, accounts)
