"""The apply rule on both real backends: newer wins, equal or older changes nothing, deletes leave
tombstones, and any permutation of a set of events (with duplicates) converges to the seq-order state."""

from __future__ import annotations

import math
import threading
import time as clock
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from sqlalchemy import (
    REAL,
    Boolean,
    Column,
    Date,
    DateTime,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    String,
    Table,
    Time,
    Uuid,
    select,
    text,
)

from dualwrite.adapter import DualWriter
from dualwrite.apply.rule import apply_events
from dualwrite.errors import DualwriteError, SchemaDriftError
from dualwrite.events import ChangeEvent
from dualwrite.settings import Settings
from dualwrite.tables import Tables
from dualwrite.testing import prepared_writer
from dualwrite.types import JSONType, UTCDateTime
from tests.core.support import TABLES, catalog, pairs, snapshot

BACKENDS = ["sqlite", "postgres"]


@pytest.fixture
def dw(settings: Settings) -> Iterator[DualWriter]:
    w = prepared_writer(settings, catalog(), phase="sqlite")
    yield w
    w.close()


def engine_of(dw: DualWriter, backend: str) -> Any:
    return dw.backends.sqlite_read if backend == "sqlite" else dw.backends.postgres


def image(i: int, name: str, **over: Any) -> dict[str, Any]:
    row = {
        "id": i,
        "tenant_id": "acme",
        "name": name,
        "qty": 2**62 + i,
        "price": Decimal("12.500"),
        "ratio": 0.25,
        "blob": b"\x00\x01",
        "doc": {"$dt": "not a tag", "n": [1, 2]},
        "at": datetime(2026, 1, 1, 12, 0, 0, 123456, tzinfo=UTC),
    }
    row.update(over)
    return row


def up(seq: int, i: int, name: str) -> ChangeEvent:
    return ChangeEvent(table="items", op="upsert", key={"id": i}, image=image(i, name), seq=seq)


def rm(seq: int, i: int) -> ChangeEvent:
    return ChangeEvent(table="items", op="delete", key={"id": i}, image=None, seq=seq)


def names(dw: DualWriter, backend: str) -> dict[int, str]:
    return {r[0]: r[2] for r in snapshot(engine_of(dw, backend))}


@pytest.mark.parametrize("backend", BACKENDS)
def test_newer_wins_older_and_duplicates_change_nothing(dw: DualWriter, backend: str) -> None:
    dw.apply(backend, [up(5, 1, "v5")])
    assert names(dw, backend) == {1: "v5"}
    dw.apply(backend, [up(3, 1, "v3")])  # out of order: older
    dw.apply(backend, [up(5, 1, "dup5")])  # same version: a duplicate is a no-op
    assert names(dw, backend) == {1: "v5"}
    dw.apply(backend, [up(9, 1, "v9"), up(7, 1, "v7")])  # one batch, out of order
    assert names(dw, backend) == {1: "v9"}
    full = snapshot(engine_of(dw, backend))
    assert full[0][1:] == tuple(image(1, "v9").values())[1:]  # every column type stored exactly


@pytest.mark.parametrize("backend", BACKENDS)
def test_delete_leaves_tombstone_that_blocks_resurrection(dw: DualWriter, backend: str) -> None:
    dw.apply(backend, [up(2, 1, "v2"), up(3, 2, "v3")])
    dw.apply(backend, [rm(10, 1)])
    assert names(dw, backend) == {2: "v3"}
    dw.apply(backend, [up(4, 1, "old")])  # an older image arriving late
    dw.apply(backend, [up(10, 1, "same")])  # same version as the delete
    dw.apply(backend, [rm(1, 2)])  # an older delete must not remove a newer row
    assert names(dw, backend) == {2: "v3"}
    # a delete that arrives before any image: the image that is older never appears
    dw.apply(backend, [rm(20, 3)])
    dw.apply(backend, [up(15, 3, "ghost")])
    assert names(dw, backend) == {2: "v3"}
    dw.apply(backend, [up(11, 1, "reborn")])  # a genuinely newer insert is applied
    assert names(dw, backend) == {1: "reborn", 2: "v3"}
    with engine_of(dw, backend).connect() as conn:
        tomb = conn.execute(text("SELECT seq FROM _dw_versions WHERE tbl='items' AND pk='[3]'")).scalar()
    assert tomb == 20


@pytest.mark.parametrize("backend", BACKENDS)
def test_composite_keys(dw: DualWriter, backend: str) -> None:
    def ev(seq: int, a: int, b: str, v: int | None) -> ChangeEvent:
        key = {"a": a, "b": b}
        if v is None:
            return ChangeEvent(table="pairs", op="delete", key=key, image=None, seq=seq)
        return ChangeEvent(table="pairs", op="upsert", key=key, image={**key, "v": v}, seq=seq)

    dw.apply(backend, [ev(1, 1, "x", 1), ev(2, 1, "y", 2), ev(3, 2, "x", 3)])
    dw.apply(backend, [ev(5, 1, "x", None), ev(4, 1, "x", 40), ev(6, 2, "x", 60)])
    assert snapshot(engine_of(dw, backend), pairs) == [(1, "y", 2), (2, "x", 60)]


# -- property: any permutation with duplicates converges to the seq-order state ---------------------------

ops = st.lists(
    st.tuples(
        st.integers(min_value=1, max_value=5), st.booleans(), st.text(max_size=6).map(lambda s: s.replace("\x00", ""))
    ),
    min_size=1,
    max_size=25,
)


def build_events(spec: list[tuple[int, bool, str]]) -> list[ChangeEvent]:
    return [
        rm(seq, k) if is_delete else up(seq, k, f"{seq}:{name}") for seq, (k, is_delete, name) in enumerate(spec, 1)
    ]


def model(events: list[ChangeEvent]) -> dict[int, str]:
    state: dict[int, str] = {}
    for ev in sorted(events, key=lambda e: e.seq):
        if ev.op == "delete":
            state.pop(ev.key["id"], None)
        else:
            assert ev.image is not None
            state[ev.key["id"]] = ev.image["name"]
    return state


def wipe(dw: DualWriter, backend: str) -> None:
    engine = dw.backends.sqlite_apply if backend == "sqlite" else dw.backends.postgres_apply
    with engine.begin() as conn:
        for t in TABLES:
            conn.execute(t.delete())
        conn.execute(text("DELETE FROM _dw_versions"))


@pytest.mark.parametrize("backend", BACKENDS)
@hsettings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=ops, data=st.data())
def test_any_permutation_with_duplicates_converges(dw: DualWriter, backend: str, spec: Any, data: Any) -> None:
    events = build_events(spec)
    # the reference: applied one at a time in seq order
    wipe(dw, backend)
    for ev in events:
        dw.apply(backend, [ev])
    in_order = snapshot(engine_of(dw, backend))
    assert {r[0]: r[2] for r in in_order} == model(events)
    # now: a permutation with duplicates, cut into random batches
    extra = data.draw(st.lists(st.sampled_from(events), max_size=10), label="duplicates")
    shuffled = data.draw(st.permutations(events + extra), label="arrival order")
    cuts = sorted(data.draw(st.sets(st.integers(0, len(shuffled)), max_size=5), label="batch cuts"))
    wipe(dw, backend)
    start = 0
    for cut in [*cuts, len(shuffled)]:
        if cut > start:
            dw.apply(backend, shuffled[start:cut])
            start = cut
    assert snapshot(engine_of(dw, backend)) == in_order


@pytest.mark.parametrize("backend", BACKENDS)
def test_unknown_columns_in_an_image_are_refused_not_dropped(dw: DualWriter, backend: str) -> None:
    """A schema drift (the primary has a column this side's table lacks) must stop the apply with a
    DualwriteError, which the replayer dead-letters, instead of silently losing the column's data."""
    drifted = ChangeEvent(
        table="items", op="upsert", key={"id": 1}, image={**image(1, "x"), "added_later": 5, "also": None}, seq=3
    )
    with pytest.raises(SchemaDriftError) as err:
        dw.apply(backend, [up(2, 2, "fine"), drifted])
    assert isinstance(err.value, DualwriteError)
    assert str(err.value) == "row image for table 'items' has column(s) the table lacks: added_later, also"
    assert names(dw, backend) == {}  # nothing of the batch was applied
    with engine_of(dw, backend).connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM _dw_versions")).scalar() == 0  # no version claimed


@pytest.mark.parametrize("ops", [("upsert", "delete"), ("delete", "upsert"), ("upsert", "upsert")])
def test_newer_change_waiting_on_an_older_apply_sees_its_commit(dw: DualWriter, ops: tuple[str, str]) -> None:
    """Two inline applies of one key race on Postgres: the older (seq 5) holds the key's version row, the
    newer (seq 6) waits for it. Whatever the newer one is, it must act on the state the older one committed
    after the newer statement began (a delete that only looked at its statement's snapshot missed the row)."""
    if ops[0] == "delete":
        dw.apply("postgres", [up(1, 1, "v1")])
    # an older upsert inserts a row that did not exist when the newer statement began (an update of an
    # existing row would be re-checked by the newer statement anyway)
    older = up(5, 1, "v5") if ops[0] == "upsert" else rm(5, 1)
    newer = rm(6, 1) if ops[1] == "delete" else up(6, 1, "v6")
    with dw.backends.postgres_apply.connect() as holder:
        holder.begin()
        apply_events(holder, dw.tables.table, [older])
        holder_pid = holder.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        errors: list[BaseException] = []

        def newer_apply() -> None:
            try:
                dw.apply("postgres", [newer])
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        thread = threading.Thread(target=newer_apply)
        thread.start()
        with dw.backends.postgres.connect() as probe:  # wait until the newer apply is blocked by the older one
            deadline = clock.monotonic() + 10
            while not probe.exec_driver_sql(
                "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))", (holder_pid,)
            ).scalar():
                assert clock.monotonic() < deadline, "the newer apply never waited for the older one"
                probe.rollback()  # pg_stat_activity is a snapshot per transaction
                clock.sleep(0.02)
        holder.commit()
    thread.join(timeout=10)
    assert not errors, errors
    assert names(dw, "postgres") == ({} if ops[1] == "delete" else {1: "v6"})


odd_md = MetaData()
# this module's own tables: shaped like other suites' Table declarations; other names and types on purpose
odd = Table(
    "odd_values",
    odd_md,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("f", Float),
    Column("r", REAL),
    Column("n", Numeric(30, 5)),
    Column("s", String(5)),
    Column("b", LargeBinary),
    Column("d", Date),
    Column("tm", Time),
    Column("dt", DateTime),
    Column("u", UTCDateTime),
    Column("bo", Boolean),
    Column("j", JSONType),
    Column("uu", Uuid),
)
ODD_ROWS = [
    dict(id=1, f=-0.0, r=1.5, n=Decimal("1.50000"), s="é\"'\\%", b=b"\x00\xff\\", d=date(1, 1, 1),
         tm=time(23, 59, 59, 999999), dt=datetime(2020, 1, 1, 1, 2, 3, 4),
         u=datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=5))), bo=True, j={"a": [1, None, "x"], "$dt": 1},
         uu=uuid.UUID(int=7)),
    dict(id=2, f=float("nan"), r=float("inf"), n=None, s=None, b=b"", d=None, tm=None, dt=None, u=None, bo=False,
         j=None, uu=None),
    dict(id=3, f=5e-324, r=-float("inf"), n=Decimal("-0.00001"), s="", b=None, d=None, tm=None, dt=None, u=None,
         bo=None, j="just a string", uu=None),
    dict(id=4, f=1e308, r=0.25, n=Decimal(2**70), s="12345", b=None, d=None, tm=None, dt=None, u=None, bo=None,
         j=[1, 2], uu=None),
]


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    return a == b and type(a) is type(b)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch", [True, False])
def test_every_value_arrives_exactly(settings: Settings, backend: str, batch: bool) -> None:
    """Values that JSON or a cast could bend (-0.0, NaN, infinities, the smallest float, 2**70 in a numeric,
    quotes and backslashes, bytes with NUL, JSON null vs SQL NULL, far dates, offsets) arrive unchanged, in
    one batch and one event at a time (the inline path)."""
    with prepared_writer(settings, Tables.of(odd, store="toy"), phase="sqlite") as w:
        events = [
            ChangeEvent.from_json(ChangeEvent(table="odd_values", op="upsert", key={"id": r["id"]}, image=r, seq=i + 1)
                                  .to_json())
            for i, r in enumerate(ODD_ROWS)
        ]
        if batch:
            w.apply(backend, events)
        else:
            for ev in events:
                w.apply(backend, [ev])
        with engine_of(w, backend).connect() as conn:
            got = [dict(r._mapping) for r in conn.execute(select(odd).order_by(odd.c.id))]
            json_nulls = conn.execute(select(odd.c.id).where(odd.c.j.is_(None))).scalars().all()
        for want, row in zip(ODD_ROWS, got, strict=True):
            wrong = {k: (v, row[k]) for k, v in want.items() if not same(v, row[k])}
            if backend == "sqlite" and row["id"] in (1, 2):
                # SQLite itself stores -0.0 as 0 and NaN as NULL (a SQLite primary cannot hold them either)
                wrong.pop("f", None)
            assert not wrong, wrong
        assert json_nulls == []  # None in a JSON column is JSON null, as SQLAlchemy stores it
