"""The harness itself: the expected state follows the database's referential actions, a writer process
agrees with both databases, and the comparison catches what it must (it is not vacuous)."""

from __future__ import annotations

import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from sqlalchemy import text, update

from dualwrite.testing import prepared_writer
from tests.userapp import writer as app
from tests.userapp.compare import assert_agree, differences, shown
from tests.userapp.fleet import Fleet
from tests.userapp.models import Base, Customer
from tests.userapp.state import Change, LogError, Schema, State


def _state() -> State:
    return State(Schema.of(Base.metadata))


def test_state_follows_cascades_and_set_null() -> None:
    s = _state()
    oid = uuid.uuid4()
    s.apply(Change("customers", "insert", {"id": 1}, {c: None for c in Customer.__table__.c.keys()} | {"id": 1}))
    order = {"id": oid, "writer": "w", "customer_id": 1, "total": Decimal("1.00"), "placed_at": None, "note": None}
    s.apply(Change("orders", "insert", {"id": oid}, order))
    line = {"order_id": oid, "line_no": 1, "writer": "w", "sku": "x", "qty": 1, "price": Decimal("1.00"), "gift": False}
    s.apply(Change("order_lines", "insert", {"order_id": oid, "line_no": 1}, line))
    doc = {
        "id": 9,
        "writer": "w",
        "owner_id": 1,
        "title": "t",
        "body": "",
        "attachment": b"",
        "sha256": "",
        "created_at": None,
    }
    s.apply(Change("documents", "insert", {"id": 9}, doc))
    for cid, parent in ((1, None), (2, 1), (3, 2), (4, None)):
        s.apply(
            Change(
                "categories",
                "insert",
                {"id": cid},
                {"id": cid, "writer": "w", "parent_id": parent, "name": "", "meta": None},
            )
        )
    prod = {
        "sku": "p",
        "writer": "w",
        "category_id": 3,
        "title": "",
        "price": Decimal("0"),
        "in_stock": True,
        "released": None,
        "updated_at": None,
    }
    s.apply(Change("products", "insert", {"sku": "p"}, prod))

    s.apply(Change("customers", "delete", {"id": 1}))
    assert not s.rows["orders"] and not s.rows["order_lines"]  # CASCADE, two levels
    assert s.rows["documents"][(9,)]["owner_id"] is None  # SET NULL
    s.apply(Change("categories", "delete", {"id": 1}))
    assert list(s.rows["categories"]) == [(4,)]  # the self-referencing subtree
    assert s.rows["products"][("p",)]["category_id"] is None
    with pytest.raises(LogError, match="deleted but not there"):
        s.apply(Change("categories", "delete", {"id": 2}))
    with pytest.raises(LogError, match="inserted without"):
        s.apply(Change("categories", "insert", {"id": 5}, {"id": 5}))


def test_a_writer_process_agrees_with_both_databases_and_a_plant_is_named(settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    prepared_writer(settings, app.tables(), phase="dual_write").close()
    with Fleet(tmp_path) as fleet:
        (proc,) = fleet.start(settings, rate=0, max_tx=80, reads=0.3, population=8, documents=2.0)
        assert proc.popen.wait(120) == 0, proc.stderr.read_text()
        stats = proc.read_stats()
        assert stats["committed"] == 80 and stats["errors"] == 0, stats
        assert stats["reads"] > 0 and stats["read_errors"] == 0 and stats["read_disagreements"] == 0, stats
        with prepared_writer(settings, app.tables(), phase="dual_write") as dw:
            engines = {"sqlite": dw.backends.sqlite_read, "postgres": dw.backends.postgres}
            state = fleet.assert_agree(engines)
            assert len(state.rows["ledger"]) == 80 and state.rows["customers"]
            ops = {tx["op"] for tx in map(__import__("json").loads, proc.log.read_text().splitlines()) if "op" in tx}
            assert {"orm_new_customer", "core_new_customer"} <= ops, ops
            # The comparison is exact: a cent, a microsecond, one JSON value and one row are each named.
            (cid,), row = next(iter(state.rows["customers"].items()))
            customers = Customer.__table__
            cent = row["balance"] + Decimal("0.01")
            prefs = {**(row["prefs"] or {}), "planted": 1}
            later = row["signed_up"] + timedelta(microseconds=1)
            with dw.backends.postgres.begin() as conn:
                conn.execute(update(customers).where(customers.c.id == cid).values(balance=cent, prefs=prefs))
            with dw.backends.sqlite.begin() as conn:
                conn.execute(update(customers).where(customers.c.id == cid).values(signed_up=later))
                conn.execute(text("DELETE FROM ledger WHERE n = 1"))
            found = differences(state, dw.backends.postgres, "postgres")
            found += differences(state, dw.backends.sqlite_read, "sqlite")
            assert found == [
                f"postgres: customers[{cid}].balance: expected {shown(row['balance'])}, found {shown(cent)}",
                f"postgres: customers[{cid}].prefs: expected {shown(row['prefs'])}, found {shown(prefs)}",
                f"sqlite: customers[{cid}].signed_up: expected {shown(row['signed_up'])}, "
                f"found {shown(later.replace(tzinfo=None))}",
                f"sqlite: ledger['{proc.name}', 1] missing",
            ], found
            with pytest.raises(AssertionError, match="4 difference"):
                assert_agree(state, engines)
