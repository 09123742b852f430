from __future__ import annotations

import time

import pytest
from sqlalchemy import select, text, update

from dualwrite import metrics
from dualwrite.redis_keys import read_shadow_counts
from dualwrite.shadow.experiment import Experiment, MismatchError, Observation
from dualwrite.shadow.reader import ShadowReader, read_mismatches
from tests.shadow.helpers import item_rows, items, seed, writer


def _count(query: str, result: str) -> float:
    return metrics.sample("dualwrite_shadow_comparisons_total", {"store": "shtest", "query": query, "result": result})


def _first(conn, n=10):
    return [dict(r) for r in conn.execute(select(items).where(items.c.id < n).order_by(items.c.id)).mappings()]


def test_planted_difference_is_caught_and_sampled_with_masked_params(dw, uid):
    q = f"first-{uid}"
    reader = ShadowReader(synchronous=True).install(dw)
    assert dw.read("shtest", q, _first) == item_rows(10)
    assert _count(q, "match") == 1
    with dw.backends.postgres.begin() as conn:
        conn.execute(update(items).where(items.c.id == 3).values(name="planted"))
    params = {"tenant": "acme", "password": "hunter2", "dsn": "postgresql://u:s3cret@db/x"}
    got = dw.read("shtest", q, _first, params=params)
    assert got[3]["name"] == "item-3"  # the control (SQLite) is served
    assert _count(q, "mismatch") == 1
    (sample,) = read_mismatches(dw.backends.redis, dw.settings.namespace)
    assert sample["query"] == q and "planted" in sample["diff"] and "item-3" in sample["diff"]
    assert "hunter2" not in sample["params"] and "s3cret" not in sample["params"] and "acme" in sample["params"]
    assert read_shadow_counts(dw.backends.redis, dw.settings.namespace) == {"match": 1, "mismatch": 1}
    reader.raise_on_mismatches = True
    with pytest.raises(MismatchError):
        dw.read("shtest", q, _first)


def test_normalization_removes_cross_engine_noise(dw, uid):
    q = f"norm-{uid}"
    with dw.backends.postgres.begin() as conn:  # trailing spaces, float noise
        conn.execute(update(items).where(items.c.id == 1).values(name="item-1   "))
        conn.execute(update(items).where(items.c.id == 2).values(amount=0.1 + 0.2 + 0.2))
    with dw.backends.sqlite.begin() as conn:
        conn.execute(update(items).where(items.c.id == 2).values(amount=0.5))

    def unordered(conn):
        rows = [dict(r) for r in conn.execute(select(items).where(items.c.id < 10)).mappings()]
        return rows[::-1] if conn.dialect.name == "postgresql" else rows

    ShadowReader(synchronous=True).install(dw)
    dw.read("shtest", q, unordered, ordered=False)
    assert _count(q, "match") == 1 and _count(q, "mismatch") == 0
    # Order matters when the query says it does.
    dw.read("shtest", q + "-o", unordered, ordered=True)
    assert _count(q + "-o", "mismatch") == 1


def test_exceptions_are_observations_and_experiment_errors_are_counted(dw, uid):
    q = f"exc-{uid}"
    ShadowReader(synchronous=True).install(dw)

    def fails_on_pg(conn):
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT * FROM no_such_table"))
        return 1

    assert dw.read("shtest", q, fails_on_pg) == 1
    assert _count(q, "mismatch") == 1

    def fails_everywhere(conn):
        raise ValueError("boom")

    with pytest.raises(ValueError):
        dw.read("shtest", q + "-both", fails_everywhere)
    assert _count(q + "-both", "match") == 1

    def bad_compare(a, b):
        raise RuntimeError("compare bug")

    ShadowReader(synchronous=True, compare=bad_compare).install(dw)
    assert dw.read("shtest", q + "-cmp", _first)
    assert _count(q + "-cmp", "error") == 1

    ShadowReader(synchronous=True, ignores=[lambda c, d: True]).install(dw)
    with dw.backends.postgres.begin() as conn:
        conn.execute(update(items).where(items.c.id == 3).values(name="planted"))
    dw.read("shtest", q + "-ign", _first)
    assert _count(q + "-ign", "ignored") == 1


def test_experiment_api_standalone():
    seen = []
    exp = Experiment("e", context={"k": 1}, publish=seen.append, raise_on_mismatches=True)
    exp.clean_with(lambda v: v["x"])
    assert exp.run(lambda: {"x": 1, "t": 1}, lambda: {"x": 1, "t": 2}) == {"x": 1, "t": 1}
    assert seen[-1].outcome == "match" and seen[-1].context == {"k": 1}
    with pytest.raises(MismatchError):
        exp.run(lambda: {"x": 1}, lambda: {"x": 2})
    off = Experiment("off", percentage=0, publish=seen.append)
    assert off.run(lambda: 5, lambda: 1 / 0) == 5 and len(seen) == 2
    gated = Experiment("g", run_if=lambda: 1 / 0, publish=seen.append)
    assert gated.run(lambda: 5, lambda: 6) == 5 and len(seen) == 2
    r = Experiment("x").evaluate(Observation("control", value=1), Observation("candidate", exception=KeyError("k")))
    assert r.outcome == "mismatch" and "KeyError" in (r.diff or "")


def test_full_pool_skips_instead_of_slowing_the_caller(dw, uid):
    q = f"slow-{uid}"
    reader = ShadowReader(max_workers=1, max_queue=1).install(dw)

    def slow_on_pg(conn):
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_sleep(0.5)"))
        return conn.execute(select(items.c.id).where(items.c.id < 3)).scalars().all()

    start = time.perf_counter()
    for _ in range(20):
        assert dw.read("shtest", q, slow_on_pg) == [0, 1, 2]
    elapsed = time.perf_counter() - start
    assert elapsed < 0.4, elapsed  # the candidates (0.5 s each) never ran on the request path
    assert _count(q, "skipped") >= 17
    assert reader.wait_idle(5)
    assert _count(q, "match") == 20 - _count(q, "skipped")
    assert read_shadow_counts(dw.backends.redis, dw.settings.namespace) == {
        "match": _count(q, "match"),
        "skipped": _count(q, "skipped"),
    }
    reader.close()


def test_aa_mode_counts_noise_apart(dw, uid):
    q = f"aa-{uid}"
    calls = {"n": 0}

    def nondeterministic(conn):
        calls["n"] += 1
        return calls["n"] if conn.dialect.name == "sqlite" else 1

    reader = ShadowReader(synchronous=True, aa_percentage=100, percentage=0).install(dw)
    dw.read("shtest", q, nondeterministic)
    assert _count(f"aa:{q}", "mismatch") == 1 and _count(q, "mismatch") == 0
    assert reader.stats["aa:mismatch"] == 1
    assert read_shadow_counts(dw.backends.redis, dw.settings.namespace) == {"aa:mismatch": 1}


def test_no_shadow_outside_shadow_phases(settings, uid):
    w = writer(settings, phase="dual_write")
    try:
        seed(w, items, item_rows(5))
        ShadowReader(synchronous=True).install(w)
        w.read("shtest", f"ds-{uid}", _first)
        assert read_shadow_counts(w.backends.redis, w.settings.namespace) == {}
    finally:
        w.close()


def test_candidate_timeout_counts_as_error_not_mismatch(dw, uid):
    q = f"to-{uid}"
    reader = ShadowReader(candidate_timeout=0.1).install(dw)

    def slow_on_pg(conn):
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_sleep(2)"))
        return 1

    assert dw.read("shtest", q, slow_on_pg) == 1
    assert reader.wait_idle(5)
    assert _count(q, "error") == 1 and _count(q, "mismatch") == 0


def test_postgres_reads_phase_serves_postgres_and_compares_sqlite(settings, uid):
    q = f"pr-{uid}"
    w = writer(settings, phase="postgres_reads")
    try:
        seed(w, items, item_rows(20))
        with w.backends.sqlite.begin() as conn:
            conn.execute(update(items).where(items.c.id == 3).values(name="sqlite-only"))
        ShadowReader(synchronous=True).install(w)
        assert w.read("shtest", q, _first)[3]["name"] == "item-3"
        assert _count(q, "mismatch") == 1
        (sample,) = read_mismatches(w.backends.redis, w.settings.namespace)
        assert sample["candidate_backend"] == "sqlite"
    finally:
        w.close()


def test_in_flight_change_between_reads_is_not_a_mismatch(dw, uid):
    q = f"inflight-{uid}"
    state = {"n": 0}

    def racing(conn):
        # The first Postgres read sees an old value; by the re-read the write has landed.
        if conn.dialect.name == "postgresql":
            state["n"] += 1
            return "old" if state["n"] == 1 else "new"
        return "new"

    ShadowReader(synchronous=True).install(dw)
    assert dw.read("shtest", q, racing) == "new"
    assert _count(q, "ignored") == 1 and _count(q, "mismatch") == 0


def test_a_difference_the_replay_heals_within_the_recheck_window_is_not_a_mismatch(dw, uid):
    """Off the request path a mismatch is read again over seconds: Postgres catches up 0.5 s later
    (an inline apply that failed, healed by the replay) and the comparison counts as in flight."""
    q = f"slowheal-{uid}"
    healed_at = time.monotonic() + 0.5

    def lagging(conn):
        if conn.dialect.name == "postgresql" and time.monotonic() < healed_at:
            return "old"
        return "new"

    reader = ShadowReader(recheck_delays=(0.0, 0.2, 1.0)).install(dw)
    try:
        assert dw.read("shtest", q, lagging) == "new"
        assert reader.wait_idle(10)
    finally:
        reader.close()
    assert _count(q, "ignored") == 1 and _count(q, "mismatch") == 0


def test_a_difference_that_outlives_every_recheck_is_a_mismatch(dw, uid):
    q = f"persists-{uid}"
    reader = ShadowReader(recheck_delays=(0.0, 0.1, 0.2)).install(dw)
    try:
        dw.read("shtest", q, lambda conn: conn.dialect.name)  # 'sqlite' vs 'postgresql', forever
        assert reader.wait_idle(10)
    finally:
        reader.close()
    assert _count(q, "mismatch") == 1 and _count(q, "ignored") == 0
    assert read_mismatches(dw.backends.redis, dw.settings.namespace, 5)[0]["query"] == q


def test_close_cuts_the_recheck_waits_short_and_still_counts_every_mismatch(dw, uid):
    """An application shutting down must not wait out seconds of re-read delays per open mismatch (the
    defaults sum to 4.2 s each, two workers, a queue of 32: over a minute): close() reads each open
    mismatch once more at once, and one that still differs counts as a mismatch, none is lost."""
    q = f"closing-{uid}"
    reader = ShadowReader(max_workers=2, max_queue=32).install(dw)  # the default re-read delays
    for _ in range(10):
        dw.read("shtest", q, lambda conn: conn.dialect.name)  # differs on every read, forever
    time.sleep(0.3)  # the workers are inside their re-read waits
    start = time.monotonic()
    reader.close(wait=True)
    took = time.monotonic() - start
    assert took < 3.0, f"close() waited {took:.1f}s on re-read delays"  # without the cut: ~20 s
    assert _count(q, "mismatch") == 10 and _count(q, "ignored") == 0
