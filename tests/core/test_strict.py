"""Strict mode means what it says (issue 14): the other side is applied before the primary commits. A
failed apply rolls the primary back and raises (nothing committed anywhere, so the application's retry
writes once); a failure after the primary committed is never reported to the application as a failed
write (counted, healed by the replayer)."""

from __future__ import annotations

import sqlite3

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import insert, select, text, update

from dualwrite.errors import SecondaryApplyError
from dualwrite.settings import Settings
from dualwrite.stream.relay import Relay
from dualwrite.stream.replay import Replayer
from dualwrite.testing import prepared_writer
from tests.core.support import both_sides, catalog, items, row


def _failures() -> float:
    return REGISTRY.get_sample_value("dualwrite_secondary_failures_total", {"store": "toy"}) or 0.0


def _outbox(dw, backend: str = "sqlite") -> list[int]:  # type: ignore[no-untyped-def]
    with dw.backends.read_engine(backend).connect() as conn:
        return [r[0] for r in conn.execute(text("SELECT seq FROM _dw_outbox ORDER BY seq"))]


def _pg_trigger(dw, *, deferred: bool) -> None:  # type: ignore[no-untyped-def]
    """A Postgres trigger that refuses rows named 'poison' (ALWAYS: it fires for replicated rows too);
    deferred: only at COMMIT."""
    when = "CONSTRAINT TRIGGER refuse_poison AFTER INSERT OR UPDATE ON items DEFERRABLE INITIALLY DEFERRED"
    with dw.backends.postgres.begin() as conn:
        conn.execute(
            text(
                "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "IF NEW.name = 'poison' THEN RAISE EXCEPTION 'poison refused by the secondary'; END IF; "
                "RETURN NEW; END $$"
            )
        )
        head = when if deferred else "TRIGGER refuse_poison BEFORE INSERT OR UPDATE ON items"
        conn.execute(text(f"CREATE {head} FOR EACH ROW EXECUTE FUNCTION refuse_poison()"))
        conn.execute(text("ALTER TABLE items ENABLE ALWAYS TRIGGER refuse_poison"))


def _drop_pg_trigger(dw) -> None:  # type: ignore[no-untyped-def]
    with dw.backends.postgres.begin() as conn:
        conn.execute(text("DROP TRIGGER refuse_poison ON items"))


def test_strict_writes_both_sides_before_returning(settings: Settings) -> None:
    with prepared_writer(settings.with_(strict=True), catalog(), phase="dual_write") as dw:
        for i in range(5):
            dw.execute(insert(items).values(row(i, i)))
            assert both_sides(dw)[0] == both_sides(dw)[1]  # applied and committed when execute returns
        dw.execute(update(items).where(items.c.id < 3).values(name="both"))
        lite, pg = both_sides(dw)
        assert lite == pg and len(lite["items"]) == 5


def test_strict_failure_rolls_the_primary_back_and_a_retry_writes_once(settings: Settings) -> None:
    with prepared_writer(settings.with_(strict=True), catalog(), phase="dual_write") as dw:
        dw.execute(insert(items).values(row(1, 1)))
        _pg_trigger(dw, deferred=False)
        before, outbox_before, failures = both_sides(dw), _outbox(dw), _failures()
        poison = row(2, 2) | {"name": "poison"}
        with pytest.raises(SecondaryApplyError, match="strict: apply to postgres failed, so the write was rolled back"):
            dw.execute(insert(items).values(poison))
        assert both_sides(dw) == before and _outbox(dw) == outbox_before  # nothing committed anywhere
        assert _failures() == failures + 1
        with pytest.raises(SecondaryApplyError), dw.begin() as tx:  # a transaction: all of it rolled back
            tx.execute(update(items).where(items.c.id == 1).values(name="changed"))
            tx.execute(insert(items).values(poison))
        assert both_sides(dw) == before and _outbox(dw) == outbox_before
        _drop_pg_trigger(dw)
        dw.execute(insert(items).values(poison))  # the application's retry: written exactly once
        lite, pg = both_sides(dw)
        assert lite == pg and [r[0] for r in lite["items"]] == [1, 2]
        assert len(_outbox(dw)) == len(outbox_before) + 1


def test_strict_never_reports_a_committed_write_as_failed(settings: Settings) -> None:
    """The other side's COMMIT fails (a deferred trigger) after the primary committed: the write returns,
    the failure is counted, and the replayer heals Postgres once the cause is gone."""
    with prepared_writer(settings.with_(strict=True), catalog(), phase="dual_write", relay=True) as dw:
        _pg_trigger(dw, deferred=True)
        failures = _failures()
        dw.execute(insert(items).values(row(7, 7) | {"name": "poison"}))  # no exception: it is committed
        assert _failures() == failures + 1
        lite, pg = both_sides(dw)
        assert [r[0] for r in lite["items"]] == [7] and pg["items"] == []
        _drop_pg_trigger(dw)
        assert Relay.for_backends(dw.backends).drain(timeout=20)
        Replayer(dw.backends, dw.tables, consumer="strict", block_ms=50).run(once=True)
        lite, pg = both_sides(dw)
        assert lite == pg and [r[0] for r in pg["items"]] == [7]


def test_strict_in_postgres_primary_rolls_postgres_back(settings: Settings) -> None:
    """The other way round: SQLite is the secondary and refuses; Postgres, the primary, commits nothing."""
    with prepared_writer(settings.with_(strict=True), catalog(), phase="postgres_primary") as dw:
        dw.execute(insert(items).values(row(1, 1)))
        with sqlite3.connect(settings.sqlite_path) as conn:
            conn.execute(
                "CREATE TRIGGER refuse_poison BEFORE INSERT ON items WHEN NEW.name = 'poison' "
                "BEGIN SELECT RAISE(ABORT, 'poison refused by the secondary'); END"
            )
        before, outbox_before = both_sides(dw), _outbox(dw, "postgres")
        with pytest.raises(SecondaryApplyError, match="apply to sqlite failed.*poison refused"):
            dw.execute(insert(items).values(row(2, 2) | {"name": "poison"}))
        assert both_sides(dw) == before and _outbox(dw, "postgres") == outbox_before
        with dw.backends.postgres.connect() as conn:
            assert conn.execute(select(items.c.id).order_by(items.c.id)).scalars().all() == [1]
