"""ORM reads through dw.read(..., orm=True) and shadow comparisons of ORM objects, on an application's own
models (tests.userapp): compared by their mapped values, mismatches named by the row's key."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, selectinload

from dualwrite.normalize import DEFAULT, row_differences
from dualwrite.redis_keys import read_shadow_counts
from dualwrite.shadow.experiment import MismatchError
from dualwrite.shadow.reader import ShadowReader, read_mismatches
from dualwrite.testing import prepared_writer
from tests.userapp.models import Customer, Order, Tier
from tests.userapp.writer import tables


def _customer(i: int) -> Customer:
    at = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    c = Customer(
        id=i,
        writer="t",
        email=f"c{i}@x",
        name=f"Zoë {i}",
        tier=Tier.pro,
        balance=Decimal(f"{i}.25"),
        active=i % 2 == 0,
        signed_up=at,
        birthday=None,
        prefs={"b": [1, {"z": None}], "a": "漢"},
        avatar=b"\0",
    )
    c.orders = [Order(writer="t", total=Decimal(f"{j}.50"), placed_at=at, note=None) for j in range(2)]
    return c


@pytest.fixture
def dw(settings):  # type: ignore[no-untyped-def]
    w = prepared_writer(settings, tables(), phase="shadow")
    with w.session() as session:
        session.add_all([_customer(i) for i in range(1, 6)])
    yield w
    w.close()


def page(session: Session) -> list[Customer]:
    stmt = select(Customer).order_by(Customer.id).options(selectinload(Customer.orders))
    return list(session.scalars(stmt))


def test_orm_read_returns_loaded_objects_from_the_phase_backend_and_is_read_only(dw) -> None:  # type: ignore[no-untyped-def]
    got = dw.read("shop", "page", page, orm=True)
    assert [c.id for c in got] == [1, 2, 3, 4, 5]
    assert got[0].tier is Tier.pro and got[0].balance == Decimal("1.25") and len(got[0].orders) == 2
    with pytest.raises(ValueError, match="read-only"):
        dw.read("shop", "write", lambda s: (s.add(_customer(99)), s.flush()), orm=True)
    with pytest.raises(TypeError, match="without orm=True"):
        dw.read("shop", "page", page, expire_on_commit=False)


def test_shadow_compares_orm_objects_by_value_and_names_the_differing_rows(dw, uid) -> None:  # type: ignore[no-untyped-def]
    reader = ShadowReader(synchronous=True).install(dw)
    q = f"page-{uid}"
    assert [c.id for c in dw.read("shop", q, page, orm=True)] == [1, 2, 3, 4, 5]
    assert read_shadow_counts(dw.backends.redis, dw.settings.namespace) == {"match": 1}  # not a "$repr" mismatch
    customers, orders = Customer.__table__, Order.__table__
    with dw.backends.postgres.begin() as conn:
        conn.execute(update(customers).where(customers.c.id == 3).values(balance=Decimal("3.26"), tier="free"))
        oid = conn.execute(select(orders.c.id).where(orders.c.customer_id == 4).limit(1)).scalar()
        conn.execute(update(orders).where(orders.c.id == oid).values(total=Decimal("9.99")))
        conn.execute(customers.delete().where(customers.c.id == 5))
    served = dw.read("shop", q, page, orm=True)
    assert [c.balance for c in served][2] == Decimal("3.25")  # the control (SQLite) is served
    (sample,) = read_mismatches(dw.backends.redis, dw.settings.namespace)
    assert sample["rows"].splitlines() == [
        "Customer[5]: only in control",
        "Customer[3]: balance, tier",
        f'Customer[4].orders -> Order["{oid}"]: total',
    ]
    reader.raise_on_mismatches = True
    with pytest.raises(MismatchError, match=r"Customer\[3\]: balance, tier"):
        dw.read("shop", q, page, orm=True)


def test_orm_objects_normalize_to_their_mapped_values() -> None:
    a, b = _customer(1), _customer(1)
    for o in a.orders + b.orders:
        o.customer = a if o in a.orders else b  # a cycle through the back-reference
    na, nb = DEFAULT.normalize(a), DEFAULT.normalize(b)
    assert na["$orm"] == "Customer" and na["$key"] == [1] and na["balance"] == 1.25 and na == nb
    assert na["tier"] == {"$enum": "Tier.pro"} and na["prefs"] == {"a": "漢", "b": [1, {"z": None}]}
    assert na["orders"][0]["customer"] == {"$orm": "Customer", "$key": [1], "$ref": True}  # the cycle is cut
    b.name = "other"
    assert row_differences(na, DEFAULT.normalize(b)) == ["Customer[1]: name"]
