"""Hypothesis races the Copier's fast path against live writers on the real servers: writers update,
insert and delete rows (through the dual-write adapter, so each change is applied to Postgres at once)
while the Copier copies the same table in random chunk sizes; then the stream is replayed and both sides
must be equal row for row, and every copied key carries a version: its own (a live write reached it) or
the range version of the chunk that copied it (apply/ranges.py)."""

from __future__ import annotations

import threading
from typing import Any

from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from sqlalchemy import delete, insert, text, update

from dualwrite.backfill import checkpoint as ckpt
from dualwrite.backfill.copier import Copier
from dualwrite.stream.replay import Replayer
from tests.backfill.support import account_row, accounts, clear, drain_relay, snapshot

N = 150
op = st.one_of(
    st.tuples(st.just("update"), st.integers(1, N + 20)),
    st.tuples(st.just("insert"), st.integers(N + 1, N + 60)),
    st.tuples(st.just("delete"), st.integers(1, N + 20)),
)
plans = st.lists(st.lists(op, min_size=5, max_size=40), min_size=2, max_size=2)


PHASE = "dual_write"  # the conftest's dw fixture


def reset(dw) -> None:  # type: ignore[no-untyped-def]
    clear(dw)
    ckpt.reset(dw.backends.postgres)
    with dw.backends.sqlite.begin() as conn:  # history from before capture began: no events
        conn.execute(insert(accounts), [account_row(i) for i in range(1, N + 1)])


def writer(dw, plan: list[tuple[str, int]], t: int, start: threading.Barrier, errors: list[BaseException]) -> None:  # type: ignore[no-untyped-def]
    try:
        start.wait()
        for n, (kind, k) in enumerate(plan):
            if kind == "update":
                dw.execute(update(accounts).where(accounts.c.id == k).values(name=f"w{t}-{n}"))
            elif kind == "delete":
                dw.execute(delete(accounts).where(accounts.c.id == k))
            else:
                with dw.begin() as tx:
                    tx.upsert(accounts, [account_row(k, f"i{t}-{n}")], ["id"])
    except BaseException as exc:  # noqa: BLE001 - reported by the test
        errors.append(exc)


def race(dw, plan: list[list[tuple[str, int]]], chunk_size: int) -> Copier:  # type: ignore[no-untyped-def]
    reset(dw)
    replayer = Replayer(dw.backends, dw.tables, consumer="r", block_ms=0)
    replayer.ensure_group()
    errors: list[BaseException] = []
    start = threading.Barrier(len(plan) + 1)
    threads = [threading.Thread(target=writer, args=(dw, p, t, start, errors)) for t, p in enumerate(plan)]
    for th in threads:
        th.start()
    copier = Copier.for_backends(dw.backends, chunk_size=chunk_size)
    start.wait()
    (rep,) = copier.copy_tables([accounts])
    for th in threads:
        th.join(60)
    assert not errors, errors
    assert rep.status == "done"
    drain_relay(dw)
    replayer.run(once=True)
    assert snapshot(dw.backends.postgres, accounts) == snapshot(dw.backends.sqlite_read, accounts)
    with dw.backends.postgres.connect() as conn:  # every copied key carries a version (none is left absent)
        missing = conn.execute(
            text(
                "SELECT count(*) FROM bf_accounts a WHERE NOT EXISTS (SELECT 1 FROM _dw_versions v"
                " WHERE v.tbl = 'bf_accounts' AND v.pk = '[' || a.id || ']')"
                " AND NOT EXISTS (SELECT 1 FROM _dw_ranges r WHERE r.tbl = 'bf_accounts' AND r.span @> a.id::bigint)"
            )
        ).scalar()
        conn.rollback()
    assert missing == 0
    return copier


@hsettings(
    max_examples=15, deadline=None, phases=[Phase.generate], suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(plan=plans.map(lambda ps: [[o for o in p if o[0] != "delete"] for p in ps]), chunk_size=st.integers(3, 40))
def test_live_updates_and_inserts_race_the_fast_copy(dw, plan: Any, chunk_size: int) -> None:  # type: ignore[no-untyped-def]
    race(dw, plan, chunk_size)


# No shrinking: a race does not shrink (hypothesis would replay it for minutes, flaky).
@hsettings(
    max_examples=12, deadline=None, phases=[Phase.generate], suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(plan=plans, chunk_size=st.integers(3, 40))
def test_live_deletes_race_the_fast_copy(dw, plan: Any, chunk_size: int) -> None:  # type: ignore[no-untyped-def]
    race(dw, plan, chunk_size)
