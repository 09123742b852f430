"""Marketplace store on each backend alone: exact money, purchases of open listings only."""

from __future__ import annotations

from decimal import Decimal

import pytest

from dualwrite.demo.app.errors import NotFoundError, StateError, ValidationError
from dualwrite.demo.app.marketplace import MarketplaceStore


def test_listings_and_exact_purchases(dw, clock, counts) -> None:  # type: ignore[no-untyped-def]
    mk = MarketplaceStore(dw, "acme", clock=clock)
    lamp = mk.list_item("Lamp", Decimal("19.99"), seller="ada", attributes={"color": "red"})
    big = mk.list_item("Yacht", "9999999999.99", seller="bob", currency="EUR")
    free = mk.list_item("Sticker", 0, seller="ada")
    assert lamp["price"] == Decimal("19.99") and str(lamp["price"]) == "19.99"
    assert str(free["price"]) == "0.00" and big["currency"] == "EUR"

    p = mk.purchase(lamp["id"], "cid", 3)
    assert (p["amount"], p["currency"], p["quantity"]) == (Decimal("59.97"), "USD", 3)
    p2 = mk.purchase(big["id"], "dan", 2)
    assert p2["amount"] == Decimal("19999999999.98")  # beyond a float's exact cents
    mk.purchase(lamp["id"], "dan")
    assert [x["buyer"] for x in mk.purchases(listing_id=lamp["id"])] == ["cid", "dan"]
    assert [x["listing_id"] for x in mk.purchases(buyer="dan")] == [big["id"], lamp["id"]]
    assert [x["title"] for x in mk.listings(seller="ada")] == ["Lamp", "Sticker"]

    assert lamp["created_at"] == lamp["updated_at"] == clock.now  # stamped from the store's clock
    clock.advance(5)
    closed = mk.close_listing(lamp["id"])
    assert closed["status"] == "closed" and mk.get_listing(lamp["id"]) == closed
    assert (closed["created_at"], closed["updated_at"]) == (lamp["created_at"], clock.now)
    assert [x["title"] for x in mk.listings("open")] == ["Yacht", "Sticker"]
    before = counts(dw)
    with pytest.raises(StateError, match=rf"marketplace_listings: listing {lamp['id']} is closed"):
        mk.purchase(lamp["id"], "eve")
    with pytest.raises(NotFoundError, match="marketplace_purchases.listing_id: marketplace_listings id 999999"):
        mk.purchase(999999, "eve")
    for call, message in [
        (lambda: mk.list_item("x", 1.5, seller="s"), "not a float"),
        (lambda: mk.list_item("x", "1.999", seller="s"), "more than 2 decimal places"),
        (lambda: mk.list_item("x", "10000000000", seller="s"), "more than 10 integer digits"),
        (lambda: mk.list_item("x", 1, seller="s", currency="usd"), "3-letter code"),
        (lambda: mk.purchase(big["id"], "eve", 0), r"quantity: 0 is not in 1\.\.1000000"),
        (lambda: mk.purchase(big["id"], "eve", 100_000), r"amount: .* more than 14 integer digits"),
    ]:
        with pytest.raises(ValidationError, match=message):
            call()
    # a negative price passes the type but not the CHECK constraint, on both backends
    with pytest.raises(ValidationError, match="marketplace_listings: check ck_marketplace_listings_price failed"):
        mk.list_item("x", "-1", seller="s")
    assert counts(dw) == before
