"""Marketplace store (P2): listings with exact prices and the purchases made from them.

Money is ExactDecimal (NUMERIC on Postgres, integer cents on SQLite): a price with more than two decimal
places is refused, never rounded. A purchase's amount is price x quantity, computed exactly, in the
listing's currency; a closed or unknown listing refuses purchases.
"""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal
from typing import Any, cast

# Each store module declares its tables from the same pieces (SQLAlchemy's, base.py's mixins and column
# helpers), so these import lists repeat by design: one store, one self-contained module.
from sqlalchemy import CheckConstraint, ForeignKeyConstraint, Index, Integer, String, UniqueConstraint, select
from sqlalchemy.orm import Mapped, mapped_column

from dualwrite.demo.app.base import Base, Stamped, StampedRow, TenantKeyed, TenantKeyedRow, core_tables
from dualwrite.demo.app.columns import ref_column, stamp_column, tenant_fk
from dualwrite.demo.app.common import TenantStore, check_choice, check_id, check_limit, check_text
from dualwrite.demo.app.errors import StateError, ValidationError
from dualwrite.types import ExactDecimal, JSONType, OrderedString

LISTING_STATUSES = ("open", "closed")
PRICE = ExactDecimal(12, 2)
AMOUNT = ExactDecimal(16, 2)
MAX_QUANTITY = 1_000_000
_CURRENCY = re.compile(r"^[A-Z]{3}$")


class MarketplaceListing(TenantKeyed, Stamped, Base):
    __tablename__ = "marketplace_listings"
    __table_args__ = (
        UniqueConstraint("id", "tenant_id"),  # target of the purchases' tenant-safe foreign key
        Index(None, "tenant_id", "status", "id"),
        Index(None, "tenant_id", "seller"),
        CheckConstraint("price >= 0", name="price"),
        CheckConstraint(f"status IN {LISTING_STATUSES}", name="status"),
    )
    seller: Mapped[str] = mapped_column(OrderedString(128))  # a profile handle or any seller reference
    title: Mapped[str] = mapped_column(String(300))
    price: Mapped[Decimal] = mapped_column(PRICE)
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(16), default="open")
    attributes: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)


class MarketplacePurchase(TenantKeyed, Base):
    __tablename__ = "marketplace_purchases"
    __table_args__ = (
        ForeignKeyConstraint(*tenant_fk("listing_id", "marketplace_listings")),
        Index(None, "tenant_id", "listing_id"),
        Index(None, "tenant_id", "buyer"),
        CheckConstraint(f"quantity >= 1 AND quantity <= {MAX_QUANTITY}", name="quantity"),
    )
    listing_id: Mapped[int] = ref_column()
    buyer: Mapped[str] = mapped_column(OrderedString(128))
    quantity: Mapped[int] = mapped_column(Integer)
    amount: Mapped[Decimal] = mapped_column(AMOUNT)
    currency: Mapped[str] = mapped_column(String(3))
    purchased_at: Mapped[datetime] = stamp_column()


marketplace_listings, marketplace_purchases = core_tables(MarketplaceListing, MarketplacePurchase)


class ListingRow(TenantKeyedRow, StampedRow):
    seller: str
    title: str
    price: Decimal
    currency: str
    status: str
    attributes: dict[str, Any]


class PurchaseRow(TenantKeyedRow):
    listing_id: int
    buyer: str
    quantity: int
    amount: Decimal
    currency: str
    purchased_at: datetime


class MarketplaceStore(TenantStore):
    store = "marketplace"

    def list_item(
        self,
        title: str,
        price: Decimal | int | str,
        *,
        seller: str,
        currency: str = "USD",
        attributes: dict[str, Any] | None = None,
    ) -> ListingRow:
        check_text(title, "marketplace_listings.title", 300, empty=False)
        check_text(seller, "marketplace_listings.seller", 128, empty=False)
        if isinstance(price, float):
            raise ValidationError("marketplace_listings.price: give a Decimal, int or str, not a float")
        if not isinstance(currency, str) or not _CURRENCY.match(currency):
            raise ValidationError(f"marketplace_listings.currency: {currency!r} is not a 3-letter code like USD")
        values = {
            "seller": seller,
            "title": title,
            "price": price,
            "currency": currency,
            "status": "open",
            "attributes": {} if attributes is None else attributes,
        }
        with self.write() as tx:
            return cast(ListingRow, self.insert(tx, marketplace_listings, values))

    def close_listing(self, listing_id: int) -> ListingRow:
        with self.write() as tx:
            listing = self.owned(tx, marketplace_listings, listing_id, "marketplace_listings.id", lock=True)
            if listing["status"] == "closed":
                return cast(ListingRow, listing)
            return cast(ListingRow, self.update_by_id(tx, marketplace_listings, listing_id, {"status": "closed"}))

    def purchase(self, listing_id: int, buyer: str, quantity: int = 1) -> PurchaseRow:
        """Buy `quantity` of an open listing; amount = price x quantity in the listing's currency."""
        check_text(buyer, "marketplace_purchases.buyer", 128, empty=False)
        if isinstance(quantity, bool) or not isinstance(quantity, int) or not 0 < quantity <= MAX_QUANTITY:
            raise ValidationError(f"marketplace_purchases.quantity: {quantity!r} is not in 1..{MAX_QUANTITY}")
        with self.write() as tx:
            listing = self.owned(tx, marketplace_listings, listing_id, "marketplace_purchases.listing_id", lock=True)
            if listing["status"] != "open":
                raise StateError(f"marketplace_listings: listing {listing_id} is {listing['status']}")
            values = {
                "listing_id": listing_id,
                "buyer": buyer,
                "quantity": quantity,
                "amount": listing["price"] * quantity,
                "currency": listing["currency"],
                "purchased_at": self.now(),
            }
            return cast(PurchaseRow, self.insert(tx, marketplace_purchases, values))

    def get_listing(self, listing_id: int) -> ListingRow | None:
        return cast(ListingRow | None, self.get_row("get_listing", marketplace_listings, listing_id))

    def listings(self, status: str | None = None, seller: str | None = None, limit: int = 100) -> list[ListingRow]:
        """Listings by id (oldest first)."""
        t = marketplace_listings
        conds = [self.mine(t)]
        if status is not None:
            conds.append(t.c.status == check_choice(status, "status", LISTING_STATUSES))
        if seller is not None:
            conds.append(t.c.seller == seller)
        stmt = select(t).where(*conds).order_by(t.c.id).limit(check_limit(limit))
        return cast(list[ListingRow], self.rows("listings", stmt, status=status, seller=seller, limit=limit))

    def purchases(self, listing_id: int | None = None, buyer: str | None = None) -> list[PurchaseRow]:
        """Purchases by id (oldest first)."""
        t = marketplace_purchases
        conds = [self.mine(t)]
        if listing_id is not None:
            conds.append(t.c.listing_id == check_id(listing_id, "listing_id"))
        if buyer is not None:
            conds.append(t.c.buyer == buyer)
        stmt = select(t).where(*conds).order_by(t.c.id)
        return cast(list[PurchaseRow], self.rows("purchases", stmt, listing_id=listing_id, buyer=buyer))
