"""Concurrent writers through the dual-write adapter leave Postgres equal to SQLite row for row, and the
stream holds exactly one event per change, in outbox (seq) order."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from sqlalchemy import Column, ForeignKey, Integer, MetaData, Table, delete, insert, select, update
from sqlalchemy.exc import IntegrityError, OperationalError

from dualwrite.adapter import DualWriter
from dualwrite.bookkeeping import outbox
from dualwrite.events import ChangeEvent
from dualwrite.settings import Settings
from dualwrite.stream.relay import Relay
from dualwrite.tables import Tables
from dualwrite.testing import prepared_writer
from tests.core.support import both_sides, catalog, items, pairs, reset_all, row, snapshot, stream_events

THREADS = 5
PER_THREAD = 50  # thread t inserts ids t*PER_THREAD + n
UNIVERSE = [t * PER_THREAD + n for t in range(THREADS) for n in range(6)]

ids = st.lists(st.sampled_from(UNIVERSE), min_size=1, max_size=4, unique=True)
op = st.one_of(
    st.tuples(st.just("insert"), st.integers(min_value=1, max_value=3)),
    st.tuples(st.just("update"), ids),
    st.tuples(st.just("delete"), ids),
    st.tuples(st.just("upsert"), ids),
    st.tuples(st.just("pairs"), st.integers(min_value=0, max_value=3)),
    st.tuples(st.just("tx"), ids),  # several statements in one transaction
    st.tuples(st.just("rekey"), st.tuples(st.sampled_from(UNIVERSE), st.sampled_from(UNIVERSE))),  # a PK update
)
plans = st.lists(st.lists(op, max_size=8), min_size=THREADS, max_size=THREADS)


def secondary_failures() -> float:
    return REGISTRY.get_sample_value("dualwrite_secondary_failures_total", {"store": "toy"}) or 0.0


@pytest.fixture(params=["dual_write", "postgres_primary"])
def writers(settings: Settings, request: pytest.FixtureRequest) -> Iterator[list[DualWriter]]:
    """One to three writers in the phase; postgres_primary runs the same property the other way round."""
    first = prepared_writer(settings, catalog(), phase=request.param)
    ws = [first] + [DualWriter(settings, catalog()) for _ in range(2)]
    yield ws
    for w in ws:
        w.close()


def run_thread(
    dw: DualWriter,
    t: int,
    plan: list[tuple[str, Any]],
    changes: list[int],
    errors: list[BaseException],
    barrier: threading.Barrier,
) -> None:
    try:
        barrier.wait()
        counter = 0
        for step, (kind, arg) in enumerate(plan):
            try:
                rows = apply_step(dw, t, step, kind, arg, counter)
            except IntegrityError:  # an upsert of another thread got there first: nothing recorded
                continue
            except OperationalError as exc:  # Postgres primary: the application's own lock-order deadlock
                if "deadlock detected" not in str(exc):
                    raise
                continue
            finally:
                if kind == "insert":
                    counter += arg
            # one event per changed row, plus a delete of the old key when an update moved a row's key
            changes.append(len(rows) + (1 if kind == "rekey" and rows and arg[0] != arg[1] else 0))
    except BaseException as exc:  # noqa: BLE001 - reported by the main thread
        errors.append(exc)


def apply_step(dw: DualWriter, t: int, step: int, kind: str, arg: Any, counter: int) -> list[Any]:
    """One application write; returns the changed rows (a failed write raises and records nothing)."""
    n = t * 1000 + step
    if kind == "insert":
        new = [t * PER_THREAD + counter + k for k in range(arg)]
        rows = dw.execute(insert(items).values([row(i, n) for i in new]))
    elif kind == "update":
        rows = dw.execute(update(items).where(items.c.id.in_(arg)).values(name=f"u{n}", qty=items.c.qty + 1))
    elif kind == "delete":
        rows = dw.execute(delete(items).where(items.c.id.in_(arg)))
    elif kind == "upsert":
        with dw.begin() as tx:
            rows = tx.upsert(items, [row(i, n) for i in arg], ["id"])
    elif kind == "pairs":
        with dw.begin() as tx:
            rows = tx.upsert(pairs, [{"a": arg, "b": "k", "v": n}], ["a", "b"])
            if n % 2:
                rows += tx.execute(delete(pairs).where(pairs.c.a == (arg + 1) % 4))
    elif kind == "rekey":
        rows = dw.execute(update(items).where(items.c.id == arg[0]).values(id=arg[1], name=f"k{n}"))
    else:  # tx
        with dw.begin() as tx:
            rows = tx.upsert(items, [row(arg[0], n)], ["id"])
            rows += tx.execute(update(items).where(items.c.id.in_(arg)).values(ratio=float(n)))
            rows += tx.execute(delete(items).where(items.c.id == arg[-1]))
    return rows


@hsettings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=plans, n_writers=st.integers(min_value=1, max_value=3))
def test_concurrent_writers_converge_and_stream_is_exact(
    settings: Settings, writers: list[DualWriter], plan: list[list[tuple[str, Any]]], n_writers: int
) -> None:
    for w in writers:  # every writer runs its own relay: several relays race to publish the same outbox
        w.stop_relay()
    reset_all(writers[0])
    for w in writers:
        w.start_relay()
    failures_before = secondary_failures()
    changes: list[int] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(THREADS)
    threads = [
        threading.Thread(target=run_thread, args=(writers[t % n_writers], t, plan[t], changes, errors, barrier))
        for t in range(THREADS)
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert not errors, errors
    assert secondary_failures() == failures_before  # equality below is not a replay's doing

    sqlite_side, pg_side = both_sides(writers[0])
    assert pg_side == sqlite_side

    relay = Relay.for_backends(writers[0].backends)
    assert relay.drain(timeout=20)
    primary = writers[0].phases.current().primary
    with writers[0].backends.read_engine(primary).connect() as conn:
        out = conn.execute(select(outbox.c.seq, outbox.c.id).order_by(outbox.c.seq)).all()
    published = stream_events(writers[0].backends.redis, settings)
    assert len(out) == sum(changes)  # one outbox event per changed row
    assert [(ev.seq, ev.id) for _, ev in published] == [tuple(r) for r in out]  # one stream entry each
    seqs = [ev.seq for _, ev in published]
    assert all(a < b for a, b in zip(seqs, seqs[1:], strict=False))
    assert [eid.decode() for eid, _ in published] == [f"{s}-0" for s in seqs]


@pytest.mark.parametrize("phase", ["dual_write", "postgres_primary"])
def test_primary_key_update_is_captured_as_delete_and_upsert(settings: Settings, phase: str) -> None:
    """RETURNING gives only the new image; the old key must still be deleted on the other side
    (bug found and fixed in adapter.py: the old row used to stay on the secondary forever)."""
    with prepared_writer(settings, catalog(), phase=phase) as dw:
        dw.execute(insert(items).values([row(i, i) for i in (1, 2, 3)]))
        rows = dw.execute(update(items).where(items.c.id.in_([1, 2])).values(id=items.c.id + 10))
        assert sorted(r["id"] for r in rows) == [11, 12]  # the caller still gets the update's rows only
        dw.execute(update(items).values({items.c.id: 30}).where(items.c.id == 3))
        dw.execute(update(items).where(items.c.id == 30).values(id=30, name="same key"))  # unchanged key
        sqlite_side, pg_side = both_sides(dw)
        assert [r[0] for r in sqlite_side["items"]] == [11, 12, 30]
        assert pg_side == sqlite_side
        primary = dw.phases.current().primary
        with dw.backends.read_engine(primary).connect() as conn:
            ops = conn.execute(select(outbox.c.op).order_by(outbox.c.seq)).scalars().all()
        assert ops == ["upsert"] * 3 + ["delete", "delete", "upsert", "upsert"] + ["delete", "upsert"] + ["upsert"]
        # a fresh replica built from the events alone agrees too
        with dw.backends.read_engine(primary).connect() as conn:
            payloads = conn.execute(select(outbox.c.payload).order_by(outbox.c.seq)).scalars().all()
        events = [ChangeEvent.from_json(p) for p in payloads]
        reset_all(dw)
        dw.apply("sqlite", list(reversed(events)))
        dw.apply("postgres", events)
        assert both_sides(dw) == (sqlite_side, sqlite_side)


cascade_md = MetaData()
parent = Table("cascade_parent", cascade_md, Column("id", Integer, primary_key=True, autoincrement=False))
child = Table(
    "cascade_child",
    cascade_md,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("pid", Integer, ForeignKey("cascade_parent.id", ondelete="CASCADE")),
)


def test_on_delete_cascade_is_captured(settings: Settings) -> None:
    with prepared_writer(settings, Tables.of([parent, child], store="toy"), phase="dual_write") as dw:
        dw.execute(insert(parent).values(id=1))
        dw.execute(insert(child).values(id=10, pid=1))
        dw.execute(delete(parent).where(parent.c.id == 1))
        assert snapshot(dw.backends.sqlite_read, child) == []
        assert snapshot(dw.backends.postgres, child) == snapshot(dw.backends.sqlite_read, child)
