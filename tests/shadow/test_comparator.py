"""Shadow comparisons in a process of their own (ShadowReader(comparator="process")): every read of a
picklable read function is compared there (the application's counters and the Redis counts see it), a
planted difference is a mismatch with its sample, and a lambda read is compared by the threads instead."""

from __future__ import annotations

import functools
import os
import time

import pytest
from sqlalchemy import select, update

from dualwrite.redis_keys import read_shadow_counts
from dualwrite.shadow.reader import ShadowReader, read_mismatches
from tests.shadow.helpers import item_rows, items


def first_rows(conn, n: int):  # type: ignore[no-untyped-def]  # module level: it pickles by reference
    return [dict(r) for r in conn.execute(select(items).where(items.c.id < n).order_by(items.c.id)).mappings()]


def first_names(session, n: int):  # type: ignore[no-untyped-def]  # an ORM read: dw.read(..., orm=True)
    return list(session.scalars(select(items.c.name).where(items.c.id < n).order_by(items.c.id)))


def _wait_for(pred, timeout: float = 60.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


def test_every_read_is_compared_in_another_process(dw, uid) -> None:  # type: ignore[no-untyped-def]
    q = f"proc-{uid}"
    reader = ShadowReader(comparator="process", max_queue=500, recheck_delays=(0.0,)).install(dw)
    try:
        for _ in range(40):
            assert dw.read("shtest", q, functools.partial(first_rows, n=10)) == item_rows(10)
        assert reader.wait_idle(120)
        assert reader.stats["match"] == 40 and reader.stats["skipped"] == 0
        assert reader._remote is not None and reader._remote._proc.pid != os.getpid()
        assert _wait_for(lambda: read_shadow_counts(dw.backends.redis, dw.settings.namespace).get("match") == 40)
        with dw.backends.postgres.begin() as conn:
            conn.execute(update(items).where(items.c.id == 3).values(name="planted"))
        got = dw.read("shtest", q, functools.partial(first_rows, n=10), params={"password": "hunter2"})
        assert got[3]["name"] == "item-3"  # the control is served at once
        assert reader.wait_idle(120)
        assert reader.stats["mismatch"] == 1
        (sample,) = read_mismatches(dw.backends.redis, dw.settings.namespace)
        assert "planted" in sample["diff"] and "hunter2" not in sample["params"]
    finally:
        reader.close()


def test_at_its_defaults_a_burst_of_reads_is_compared_whole(dw, uid) -> None:  # type: ignore[no-untyped-def]
    """A record waits up to the sender's interval in the application before it leaves: the process' default
    bound holds a burst of 200 reads (at the threads' 32, 170 of them were counted skipped, uncompared)."""
    q = f"burst-{uid}"
    reader = ShadowReader(comparator="process", recheck_delays=(0.0,)).install(dw)
    try:
        for _ in range(200):
            dw.read("shtest", q, functools.partial(first_rows, n=3))
        assert reader.wait_idle(120)
        assert reader.stats["match"] == 200 and reader.stats["skipped"] == 0, reader.stats
    finally:
        reader.close()


def test_an_orm_read_of_a_module_level_function_is_compared_in_the_process(dw, uid) -> None:  # type: ignore[no-untyped-def]
    """dw.read(..., orm=True) runs the function in a read-only Session: that wrapping must pickle too, or
    every ORM read (the way most applications read) would be compared on the application's threads."""
    q = f"orm-{uid}"
    reader = ShadowReader(comparator="process", max_queue=500, recheck_delays=(0.0,)).install(dw)
    try:
        for _ in range(10):
            assert dw.read("shtest", q, functools.partial(first_names, n=4), orm=True) == [
                "item-0",
                "item-1",
                "item-2",
                "item-3",
            ]
        assert reader.wait_idle(120)
        assert reader.stats["match"] == 10 and reader.local_queries == set()
    finally:
        reader.close()


def test_a_read_that_does_not_pickle_is_compared_by_the_threads(dw, uid) -> None:  # type: ignore[no-untyped-def]
    q = f"lambda-{uid}"
    reader = ShadowReader(comparator="process").install(dw)
    try:
        for _ in range(3):
            dw.read("shtest", q, lambda conn: first_rows(conn, 5))
        assert reader.wait_idle(60)
        assert reader.stats["match"] == 3 and reader.local_queries == {q}
    finally:
        reader.close()


def failing(conn, n: int):  # type: ignore[no-untyped-def]  # raises the same error on both sides
    raise ValueError(f"no item {n}")


def test_a_read_that_raises_is_raised_to_the_caller_and_compared(dw, uid) -> None:  # type: ignore[no-untyped-def]
    q = f"raises-{uid}"
    reader = ShadowReader(comparator="process", recheck_delays=(0.0,)).install(dw)
    try:
        for _ in range(5):
            with pytest.raises(ValueError, match="no item 7"):
                dw.read("shtest", q, functools.partial(failing, n=7))
        assert reader.wait_idle(120)
        assert reader.stats["match"] == 5 and not reader.local_queries  # same error both sides, in the process
    finally:
        reader.close()


def test_a_changed_percentage_applies_to_the_next_reads(dw, uid) -> None:  # type: ignore[no-untyped-def]
    """The request path looks a query's experiment up once per configuration: the percentage is part of it."""
    q = f"pct-{uid}"
    reader = ShadowReader(comparator="process", recheck_delays=(0.0,)).install(dw)
    try:
        for pct in (100, 0, 100):
            reader.percentage = pct
            for _ in range(4):
                dw.read("shtest", q, functools.partial(first_rows, n=3))
        assert reader.wait_idle(120)
        assert reader.stats["match"] == 8 and reader.stats["skipped"] == 0
    finally:
        reader.close()


def test_comparator_must_be_thread_or_process() -> None:
    with pytest.raises(ValueError, match="comparator"):
        ShadowReader(comparator="fork")


def test_records_over_the_bound_are_counted_skipped_never_lost(dw, uid) -> None:  # type: ignore[no-untyped-def]
    q = f"bound-{uid}"
    reader = ShadowReader(comparator="process", max_queue=1, recheck_delays=(0.0,)).install(dw)
    try:  # the comparator is still starting while these are read: one record in flight, the rest over the bound
        for _ in range(40):
            dw.read("shtest", q, functools.partial(first_rows, n=3))
        assert reader.wait_idle(120)
        assert reader.stats["skipped"] >= 1
        assert reader.stats["match"] + reader.stats["skipped"] == 40
        assert _wait_for(
            lambda: (
                read_shadow_counts(dw.backends.redis, dw.settings.namespace).get("skipped") == reader.stats["skipped"]
            )
        )
    finally:
        reader.close()


def dialect(conn):  # type: ignore[no-untyped-def]  # 'sqlite' vs 'postgresql': differs on every read, forever
    return conn.dialect.name


def lagging(conn, healed_at: float):  # type: ignore[no-untyped-def]  # Postgres catches up at `healed_at`
    return "old" if conn.dialect.name == "postgresql" and time.time() < healed_at else "new"


def _warm(dw, reader, q: str) -> None:  # type: ignore[no-untyped-def]
    """The comparator process started and serving (it takes a second or two to import and connect)."""
    dw.read("shtest", q, functools.partial(first_rows, n=3))
    assert reader.wait_idle(120)


def test_a_persistent_mismatch_does_not_hold_up_the_comparisons_behind_it(dw, uid) -> None:  # type: ignore[no-untyped-def]
    """Its re-reads (the default delays: 0, 0.2, 1 and 3 s) are scheduled, not waited out in the comparator's
    loop: the reads after it are compared within a second or two, none skipped, while it is still being read
    again; it then ends as a mismatch with its sample."""
    q, bad = f"burst-{uid}", f"differs-{uid}"
    reader = ShadowReader(comparator="process", max_queue=500).install(dw)
    try:
        _warm(dw, reader, q)
        dw.read("shtest", bad, dialect)
        time.sleep(0.3)  # the comparator has seen it differ and is re-reading it
        start = time.monotonic()
        for _ in range(30):
            dw.read("shtest", q, functools.partial(first_rows, n=10))
        assert _wait_for(lambda: reader.stats["match"] == 31, timeout=2.0), dict(reader.stats)
        took = time.monotonic() - start
        assert reader.stats["mismatch"] == 0 and reader.stats["skipped"] == 0  # still pending its re-reads
        assert reader.wait_idle(30)
        assert reader.stats["mismatch"] == 1 and reader.stats["match"] == 31 and reader.stats["skipped"] == 0
        assert reader._remote is not None and reader._remote.outstanding == 0
        (sample,) = read_mismatches(dw.backends.redis, dw.settings.namespace)
        assert sample["query"] == bad and "postgresql" in sample["diff"]
        assert _wait_for(
            lambda: read_shadow_counts(dw.backends.redis, dw.settings.namespace) == {"match": 31, "mismatch": 1}
        )
    finally:
        reader.close()
    assert took < 2.0


def test_a_difference_that_heals_within_the_rereads_is_ignored(dw, uid) -> None:  # type: ignore[no-untyped-def]
    """Postgres catches up 2 s after the read (the last re-read, 4.2 s after it, matches): "ignored", not a
    mismatch, and no sample; the reads meanwhile are compared without waiting for it."""
    q, healing = f"meanwhile-{uid}", f"heals-{uid}"
    reader = ShadowReader(comparator="process", max_queue=500).install(dw)
    try:
        _warm(dw, reader, q)
        dw.read("shtest", healing, functools.partial(lagging, healed_at=time.time() + 2.0))
        for _ in range(10):
            dw.read("shtest", q, functools.partial(first_rows, n=10))
        assert _wait_for(lambda: reader.stats["match"] == 11, timeout=2.0), dict(reader.stats)
        assert reader.wait_idle(30)
        assert reader.stats["ignored"] == 1 and reader.stats["mismatch"] == 0
        assert read_mismatches(dw.backends.redis, dw.settings.namespace) == []
    finally:
        reader.close()


def test_close_reads_pending_mismatches_once_at_once_and_counts_every_record(dw, uid) -> None:  # type: ignore[no-untyped-def]
    """close() with re-reads pending: each is read once more at once (no delay waited out) and, still
    differing, counts as a mismatch; every record reaches the application's counts and Redis before the
    process exits, well within the close timeout (10 s), none killed with it."""
    q, bad = f"closing-{uid}", f"differs-{uid}"
    reader = ShadowReader(comparator="process", max_queue=500).install(dw)
    closed = False
    try:
        _warm(dw, reader, q)
        for _ in range(5):
            dw.read("shtest", bad, dialect)
            dw.read("shtest", q, functools.partial(first_rows, n=10))
        time.sleep(0.5)  # sent, compared, the mismatches waiting for their re-reads
        start = time.monotonic()
        reader.close()
        closed = True
        took = time.monotonic() - start
    finally:
        if not closed:
            reader.close()
    assert took < 3.0, f"close() took {took:.1f}s"  # waiting out the re-reads in turn: 5 x 4.2 s, killed at 10 s
    assert dict(reader.stats) == {"match": 6, "mismatch": 5}
    assert read_shadow_counts(dw.backends.redis, dw.settings.namespace) == {"match": 6, "mismatch": 5}
    assert len(read_mismatches(dw.backends.redis, dw.settings.namespace)) == 5


def test_close_receives_every_report_even_from_a_receiver_behind(dw, uid) -> None:  # type: ignore[no-untyped-def]
    """The comparator's last report (the re-reads close() cut short) is in the pipe when its process exits; a
    receiving thread still busy with the report before it (its GIL share on a loaded machine) must get it too:
    close() closed the pipe under it, and those mismatches never reached the application's counts (Redis had
    them)."""
    q, bad = f"behind-{uid}", f"differs-{uid}"
    reader = ShadowReader(comparator="process", max_queue=500).install(dw)
    closed = False
    try:
        _warm(dw, reader, q)
        assert reader._remote is not None
        counted = reader._remote.on_outcome

        slow = [3.0]  # the first report's handling outlasts the comparator's own shutdown (about a second)

        def behind(*outcome: object) -> None:  # the application's receiving thread, slow to get the GIL
            time.sleep(slow.pop() if slow else 0.0)
            counted(*outcome)

        reader._remote.on_outcome = behind
        for _ in range(3):
            dw.read("shtest", bad, dialect)
            dw.read("shtest", q, functools.partial(first_rows, n=10))
        time.sleep(0.5)  # the matches reported (their receiver still busy), the mismatches re-read
        reader.close()
        closed = True
    finally:
        if not closed:
            reader.close()
    assert read_shadow_counts(dw.backends.redis, dw.settings.namespace) == {"match": 4, "mismatch": 3}
    assert dict(reader.stats) == {"match": 4, "mismatch": 3}


def test_mismatches_waiting_for_their_rereads_leave_the_bound_to_the_other_reads(dw, uid) -> None:  # type: ignore[no-untyped-def]
    """A persistent mismatch read often (here: as many as the bound) parks each of its reads for 4.2 s of
    re-reads; they held the bound meanwhile, so every other read was skipped, uncompared, until they ended.
    Parked ones (up to `max_queue` of them) now leave the bound: the reads behind them are compared."""
    q, bad = f"beside-{uid}", f"differs-{uid}"
    reader = ShadowReader(comparator="process", max_queue=4).install(dw)
    try:
        _warm(dw, reader, q)
        dw.read("shtest", bad, dialect)
        time.sleep(0.3)  # its query and function defined (they count in the bound until the comparator has them)
        for _ in range(3):
            dw.read("shtest", bad, dialect)
        time.sleep(0.6)  # compared, seen differing, waiting for their re-reads (the last at 4.2 s)
        for _ in range(4):
            dw.read("shtest", q, functools.partial(first_rows, n=10))
        assert _wait_for(lambda: reader.stats["match"] == 5, timeout=3.0), dict(reader.stats)
        assert reader.stats["skipped"] == 0 and reader.stats["mismatch"] == 0  # the 4 still being re-read
        assert reader.wait_idle(30)
        assert dict(reader.stats) == {"match": 5, "mismatch": 4}
    finally:
        reader.close()


def stalled(conn, seconds: float):  # type: ignore[no-untyped-def]  # a candidate read that outlasts close()
    if conn.dialect.name == "postgresql":
        time.sleep(seconds)
    return 1


def test_a_comparator_killed_at_close_says_how_many_comparisons_it_lost(dw, uid, caplog) -> None:  # type: ignore[no-untyped-def]
    """close() kills a comparator that does not exit within its timeout: the records it held are lost, and
    that was silent (the warning is skipped while closing, when a clean exit leaves none in flight)."""
    q = f"stalled-{uid}"
    reader = ShadowReader(comparator="process", max_queue=500).install(dw)
    try:
        _warm(dw, reader, f"warm-{uid}")
        for _ in range(3):
            dw.read("shtest", q, functools.partial(stalled, seconds=5.0))
        time.sleep(0.3)  # sent: the comparator is in the first one's candidate read
        assert reader._remote is not None
        with caplog.at_level("WARNING", logger="dualwrite.shadow.comparator"):
            reader._remote.close(timeout=0.5)
    finally:
        reader.close()
    assert "comparisons in flight are lost" in caplog.text, caplog.text
