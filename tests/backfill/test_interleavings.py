"""Hypothesis tries to break the apply rule for the backfill: random interleavings of live writes, chunk
reads, chunk applies (in any order, late, twice) and partial replays; then both sides must be equal.
Each chunk apply path runs: the staging merge, INSERT .. ON CONFLICT, the fast path (COPY into fresh
keys, falling back to the merge for the keys a live write reached), and the range path (one range version
per chunk span, spans.py)."""

from __future__ import annotations

from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from sqlalchemy import delete, insert, select, update

from dualwrite.apply.rule import apply_snapshot_rows
from dualwrite.backfill.copier import copy_apply
from dualwrite.backfill.cursor import read_chunk
from dualwrite.backfill.load import load_chunk
from dualwrite.backfill.spans import load_span
from dualwrite.stream.replay import Replayer
from tests.backfill.support import accounts, clear, drain_relay, snapshot

KEYS = 12
ops = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.integers(1, KEYS)),
        st.tuples(st.just("del"), st.integers(1, KEYS)),
        st.tuples(st.just("read"), st.integers(0, KEYS)),
        st.tuples(st.just("apply"), st.integers(0, 50)),
        st.tuples(st.just("replay"), st.integers(1, 5)),
    ),
    max_size=40,
)




def reset(dw) -> None:  # type: ignore[no-untyped-def]
    clear(dw)


def apply_chunk(conn, chunk, mode: str) -> None:  # type: ignore[no-untyped-def]
    if mode == "merge":
        copy_apply(conn, accounts, chunk.rows, chunk.version)
    elif mode == "slow":
        apply_snapshot_rows(conn, accounts, chunk.rows, chunk.version)
    elif mode == "ranges":
        assert load_span(conn, accounts, chunk.columns, chunk.values, chunk.version, chunk.span) is not None
    else:
        load_chunk(conn, accounts, chunk.columns, chunk.values, chunk.version)


@hsettings(max_examples=48, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=ops, mode=st.sampled_from(["merge", "slow", "fastpath", "ranges"]))
def test_random_interleavings_converge(dw, steps, mode) -> None:  # type: ignore[no-untyped-def]
    reset(dw)
    replayer = Replayer(dw.backends, dw.tables, consumer="h", batch=3, block_ms=0)
    replayer.ensure_group()
    pending = []
    n = 0
    for op, arg in steps:
        n += 1
        if op == "put":
            with dw.backends.sqlite_read.connect() as conn:
                exists = conn.execute(select(accounts.c.id).where(accounts.c.id == arg)).first() is not None
            if exists:
                dw.execute(update(accounts).where(accounts.c.id == arg).values(name=f"v{n}"))
            else:
                dw.execute(insert(accounts).values(id=arg, name=f"v{n}", doc={"n": n}))
        elif op == "del":
            dw.execute(delete(accounts).where(accounts.c.id == arg))
        elif op == "read":
            pending.append(read_chunk(dw.backends.sqlite_read, accounts, (arg,) if arg else None, 4))
        elif op == "apply" and pending:
            chunk = pending[arg % len(pending)]  # any order, possibly twice
            with dw.backends.postgres_apply.begin() as conn:
                apply_chunk(conn, chunk, mode)
        elif op == "replay":
            drain_relay(dw)
            for _ in range(arg):
                replayer.step(block_ms=0)
    # Finish: a full copy pass, then replay everything.
    after = None
    while True:
        chunk = read_chunk(dw.backends.sqlite_read, accounts, after, 5)
        if not chunk.rows and mode != "ranges":
            break
        with dw.backends.postgres_apply.begin() as conn:
            apply_chunk(conn, chunk, mode if mode in ("fastpath", "ranges") else "merge")
        if not chunk.rows:
            break
        after = chunk.last_key
    for chunk in pending:  # late, stale chunks change nothing
        with dw.backends.postgres_apply.begin() as conn:
            apply_chunk(conn, chunk, mode if mode in ("fastpath", "ranges") else "merge")
    drain_relay(dw)
    replayer.run(once=True)
    assert snapshot(dw.backends.sqlite_read, accounts) == snapshot(dw.backends.postgres, accounts)
