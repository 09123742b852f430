"""Unique constraints under reordering (issue 14): a unique swap inside one transaction is applied inline
(no secondary failure, nothing left for the replayer); an image that collides with a newer row is stale,
never a dead letter; a real conflict still fails."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import Column, Integer, MetaData, String, Table, UniqueConstraint, insert, select, text, update
from sqlalchemy.exc import IntegrityError

from dualwrite.adapter import DualWriter
from dualwrite.apply.rule import apply_events
from dualwrite.events import ChangeEvent
from dualwrite.redis_keys import dead_letter_key
from dualwrite.settings import Settings
from dualwrite.stream.relay import Relay
from dualwrite.stream.replay import Replayer
from dualwrite.tables import Tables
from dualwrite.testing import prepared_writer

md = MetaData()
# this module's own tables: shaped like other suites' Table declarations; other names and types on purpose
users = Table(
    "uq_users",
    md,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("email", String(60), unique=True),
    Column("org", Integer),
    Column("handle", String(30)),
    UniqueConstraint("org", "handle"),
)
BACKENDS = ["sqlite", "postgres"]


def _failures() -> float:
    return REGISTRY.get_sample_value("dualwrite_secondary_failures_total", {"store": "uq"}) or 0.0


@pytest.fixture(params=["dual_write", "postgres_primary"])
def dw(settings: Settings, request: pytest.FixtureRequest) -> Iterator[DualWriter]:
    w = prepared_writer(settings, Tables.of(md, store="uq"), phase=request.param, relay=True)
    yield w
    w.close()


def _rows(engine) -> list[tuple]:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(users).order_by(users.c.id))]


def _both(dw: DualWriter) -> tuple[list[tuple], list[tuple]]:
    return _rows(dw.backends.sqlite_read), _rows(dw.backends.postgres)


def _swap(dw: DualWriter, a: int, b: int) -> None:
    """Rows a and b exchange their e-mail and handle in one transaction (a's through temporary values, as
    the primary's own unique constraints require)."""
    with dw.begin() as tx:
        cur = {r.id: r for r in tx.connection.execute(select(users).where(users.c.id.in_([a, b])))}
        tx.execute(update(users).where(users.c.id == a).values(email=f"tmp{a}", handle=f"tmp{a}"))
        tx.execute(update(users).where(users.c.id == b).values(email=cur[a].email, handle=cur[a].handle))
        tx.execute(update(users).where(users.c.id == a).values(email=cur[b].email, handle=cur[b].handle))


def test_unique_swap_in_one_transaction_applies_inline(dw: DualWriter) -> None:
    dw.execute(insert(users).values([{"id": i, "email": f"u{i}@x", "org": 1, "handle": f"h{i}"} for i in range(4)]))
    failures = _failures()
    _swap(dw, 0, 1)
    lite, pg = _both(dw)
    assert lite == pg, "the inline apply did not bring the swap"  # before any replay
    assert [r[1] for r in lite] == ["u1@x", "u0@x", "u2@x", "u3@x"]
    with dw.begin() as tx:  # a swap plus a delete that frees a value another row takes
        tx.execute(users.delete().where(users.c.id == 2))
        tx.execute(update(users).where(users.c.id == 3).values(email="u2@x", handle="h2"))
        tx.execute(insert(users).values(id=4, email="u3@x", org=1, handle="h3"))
    _swap(dw, 1, 4)
    lite, pg = _both(dw)
    assert lite == pg and _failures() == failures
    assert Relay.for_backends(dw.backends).drain(timeout=20)
    rp = Replayer(dw.backends, dw.tables, consumer="uq", block_ms=50)
    rp.run(once=True)  # replaying all of it again: stale, and no dead letter
    assert rp.stats.dead == 0 and rp.stats.applied == 0
    assert _both(dw) == (lite, pg)
    assert dw.backends.redis.exists(dead_letter_key(dw.settings.namespace)) == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_image_colliding_with_a_newer_row_is_stale(settings: Settings, backend: str) -> None:
    """Key 1 held e@x at seq 5 and was deleted before a copy that brought key 2 holding e@x at version 9:
    the old image of key 1 has no tombstone to lose to, wins its claim and collides with key 2."""
    with prepared_writer(settings, Tables.of(md, store="uq"), phase="sqlite") as dw:
        engine = dw.backends.apply_engine(backend)
        with engine.begin() as conn:
            assert apply_events(conn, dw.tables.table, [_ev(2, "e@x", 9)]).applied == 1
        with engine.begin() as conn:
            res = apply_events(conn, dw.tables.table, [_ev(1, "e@x", 5), _ev(3, "f@x", 6)])
        assert (res.applied, res.stale) == (1, 1)  # key 3 applied, key 1's image skipped as stale
        with engine.begin() as conn:  # alone, too
            res = apply_events(conn, dw.tables.table, [_ev(1, "e@x", 5)])
        assert (res.applied, res.stale) == (0, 1)
        assert [r[:2] for r in _rows(dw.backends.read_engine(backend))] == [(2, "e@x"), (3, "f@x")]
        with engine.begin() as conn, pytest.raises(IntegrityError):  # a collider at an OLDER version: real
            apply_events(conn, dw.tables.table, [_ev(5, "f@x", 20)])
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM _dw_versions")).scalar() == 2  # keys 2 and 3


def _ev(key: int, email: str, seq: int) -> ChangeEvent:
    image = {"id": key, "email": email, "org": 1, "handle": f"h{key}"}
    return ChangeEvent("uq_users", "upsert", {"id": key}, image, seq=seq)
