"""Comparisons wait for the request path to be idle (bounded), match equal raw values without normalizing,
and batch their Redis counts; none of it may change what is compared or counted."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

from sqlalchemy import select

from dualwrite import metrics
from dualwrite.normalize import DEFAULT, identical
from dualwrite.redis_keys import read_shadow_counts
from dualwrite.shadow.experiment import CHUNK, Experiment, Observation
from dualwrite.shadow.pacing import RequestGate
from dualwrite.shadow.reader import ShadowReader
from tests.shadow.helpers import items


def _count(query: str, result: str) -> float:
    return metrics.sample("dualwrite_shadow_comparisons_total", {"store": "shtest", "query": query, "result": result})


def test_gate_waits_for_idle_and_is_bounded():
    gate = RequestGate(max_defer=5)
    gate.wait_quiet()  # idle: returns at once
    gate.enter()
    done = threading.Event()
    th = threading.Thread(target=lambda: (gate.wait_quiet(), done.set()))
    th.start()
    assert not done.wait(0.3)  # a request is in flight: the worker waits
    gate.leave()
    assert done.wait(2)  # woken as soon as the path is idle
    th.join()

    short = RequestGate(max_defer=0.2)
    short.enter()
    start = time.monotonic()
    short.wait_quiet()  # never idle: runs anyway after max_defer
    assert 0.15 <= time.monotonic() - start < 2
    short.leave()


def test_comparison_waits_for_the_request_in_flight(dw, uid):
    q = f"defer-{uid}"
    reader = ShadowReader(max_defer=30).install(dw)
    release, entered, pg_calls = threading.Event(), threading.Event(), []

    def first(conn):
        if conn.dialect.name == "postgresql":
            pg_calls.append(time.monotonic())
        return conn.execute(select(items.c.id).where(items.c.id < 3)).scalars().all()

    def slow_request(conn):
        if conn.dialect.name == "sqlite":
            entered.set()
            release.wait(10)
        return 1

    th = threading.Thread(target=lambda: dw.read("shtest", q + "-slow", slow_request))
    th.start()
    assert entered.wait(5)
    assert dw.read("shtest", q, first) == [0, 1, 2]
    time.sleep(0.4)
    assert pg_calls == []  # the other request is still being served: the candidate waits
    released_at = time.monotonic()
    release.set()
    th.join()
    assert reader.wait_idle(10)
    assert len(pg_calls) == 1 and pg_calls[0] >= released_at
    assert _count(q, "match") == 1 and _count(q + "-slow", "match") == 1
    reader.close()


def test_saturated_path_still_compares_after_max_defer(dw, uid):
    q = f"forced-{uid}"
    reader = ShadowReader(max_defer=0.2).install(dw)
    release = threading.Event()
    th = threading.Thread(target=lambda: dw.read("shtest", q + "-held", lambda c: release.wait(10) and 1))
    th.start()
    try:
        time.sleep(0.05)
        dw.read("shtest", q, lambda c: 5)
        deadline = time.monotonic() + 5
        while _count(q, "match") < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _count(q, "match") == 1  # compared although the path never went idle
    finally:
        release.set()
        th.join()
    assert reader.wait_idle(10)
    reader.close()


def test_counts_reach_redis_when_the_queue_drains(dw, uid):
    reader = ShadowReader().install(dw)
    dw.read("shtest", f"drain-{uid}", lambda c: 1)
    deadline = time.monotonic() + 5
    while read_shadow_counts(dw.backends.redis, dw.settings.namespace) != {"match": 1} and time.monotonic() < deadline:
        time.sleep(0.02)
    assert read_shadow_counts(dw.backends.redis, dw.settings.namespace) == {"match": 1}  # without wait_idle or close
    reader.close()


def test_identical_never_claims_what_normalization_would_deny(dw):
    with dw.backends.sqlite.connect() as conn:
        a = conn.execute(select(items.c.id, items.c.name).where(items.c.id == 1)).first()
        b = conn.execute(select(items.c.id.label("name"), items.c.name.label("id")).where(items.c.id == 1)).first()
    assert tuple(a) == tuple(b) and not identical(a, b)  # same values, other column names
    plus1 = timezone(timedelta(hours=1))
    values = [1, True, 1.0, Decimal("1.0"), "x", "x ", '{"a": 1}', {"a": 1}, [1], (1,), None, float("nan")]
    values += [datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 1, 1, tzinfo=plus1), datetime(2024, 1, 1)]
    values += [Decimal("sNaN"), b"x", {"a": 1, "b": [1, {"c": 2}]}, {"b": [1, {"c": 2}], "a": 1}]
    for x in values:
        for y in values:
            if identical(x, y):
                assert DEFAULT.normalize(x) == DEFAULT.normalize(y), (x, y)
    assert identical({"a": 1, "b": [1, {"c": 2}]}, {"b": [1, {"c": 2}], "a": 1})


def test_long_results_pause_between_slices_and_compare_the_same():
    n = CHUNK * 4 + 3
    rows = [{"id": i, "v": f"v{i}"} for i in range(n)]
    paused: list[int] = []

    def pause() -> None:
        paused.append(1)

    exp = Experiment("long")
    same = exp.evaluate(Observation("control", value=rows), Observation("candidate", value=list(rows)), pause)
    assert same.matched and len(paused) == 5
    # Equal after normalization only (Decimal vs float, key order): the long way, still in slices.
    other = [{"v": r["v"], "id": Decimal(r["id"])} for r in rows]
    paused.clear()
    res = exp.evaluate(Observation("control", value=rows), Observation("candidate", value=other), pause)
    assert res.matched and len(paused) > 5
    changed = list(rows)
    changed[n - 1] = {"id": n - 1, "v": "different"}
    res = exp.evaluate(Observation("control", value=rows), Observation("candidate", value=changed), lambda: None)
    assert res.mismatched and "different" in (res.diff or "")
    unordered = Experiment("u", ordered=False)
    backwards = Observation("candidate", value=rows[::-1])
    res = unordered.evaluate(Observation("control", value=rows), backwards, lambda: None)
    assert res.matched
