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
