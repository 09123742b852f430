"""The replay loop's garbage-collector threshold: raised while a loop runs, put back after the last one."""

from __future__ import annotations

import gc

from sqlalchemy import insert

from dualwrite.stream.gc_batches import OBJECTS_PER_EVENT, batch_gc
from dualwrite.stream.replay import Replayer
from dualwrite.testing import prepared_writer
from tests.backfill.support import accounts, catalog, drain_relay


def test_threshold_raised_while_loops_run_and_restored_after_the_last() -> None:
    before = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        with batch_gc(500):
            assert gc.get_threshold() == (2 * OBJECTS_PER_EVENT * 500, 10, 10)
            with batch_gc(2000):  # a second loop (another thread) with bigger batches raises it further
                assert gc.get_threshold()[0] == 2 * OBJECTS_PER_EVENT * 2000
            assert gc.get_threshold()[0] == 2 * OBJECTS_PER_EVENT * 2000  # never lowered while one runs
        assert gc.get_threshold() == (700, 10, 10)
    finally:
        gc.set_threshold(*before)


def test_a_higher_threshold_or_collection_off_is_left_alone() -> None:
    before = gc.get_threshold()
    try:
        for setting in ((1_000_000, 10, 10), (0, 10, 10)):
            gc.set_threshold(*setting)
            with batch_gc(500):
                assert gc.get_threshold() == setting
            assert gc.get_threshold() == setting
    finally:
        gc.set_threshold(*before)


def test_replayer_run_holds_the_threshold_and_puts_it_back(settings) -> None:  # type: ignore[no-untyped-def]
    w = prepared_writer(settings, catalog(), phase="sqlite")
    before = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        for i in range(1, 21):
            w.execute(insert(accounts).values(id=i, name=f"a{i}"))
        drain_relay(w)
        seen: list[int] = []
        r = Replayer(w.backends, w.tables, consumer="one", batch=20, block_ms=50)
        step = r.step

        def watched(block_ms: int | None = None) -> int:
            seen.append(gc.get_threshold()[0])
            return step(block_ms)

        r.step = watched  # type: ignore[method-assign]
        assert r.run(once=True).applied == 20
        assert seen and set(seen) == {2 * OBJECTS_PER_EVENT * 20}  # 1,000 > the default 700
        assert gc.get_threshold() == (700, 10, 10)
    finally:
        gc.set_threshold(*before)
        w.close()
