"""The application's transactions, one method each: ORM and Core inserts, updates and deletes through a
DualWriter, per table (customers, orders and lines, categories and products, documents).

Each one changes only the writer's own rows (the `writer` column; a foreign key never crosses writers),
logs its intended changes into a `Tx` (state.py) and adds its ledger row in the same transaction.
`Workload` (workload.py) chooses among them.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, insert, inspect, update
from sqlalchemy.orm import Session

from tests.userapp.models import Category, Customer, Document, Ledger, Order, OrderLine, Product
from tests.userapp.state import State, Tx
from tests.userapp.values import DOC_BLOB_BYTES, DOC_TEXT_BYTES, Values

customers, orders, lines = Customer.__table__, Order.__table__, OrderLine.__table__
categories, products, documents, ledger = Category.__table__, Product.__table__, Document.__table__, Ledger.__table__


def row_of(obj: Any) -> dict[str, Any]:
    """A mapped object's column values, by column name."""
    mapper = inspect(type(obj))
    return {col.name: getattr(obj, mapper.get_property_by_column(col).key) for col in mapper.local_table.columns}


class Transactions:
    """The operations `Workload` runs; it sets these attributes."""

    dw: Any
    name: str
    index: int
    state: State
    v: Values
    pending: Callable[[Tx], None]
    counter: int

    # -- the writer's rows and new keys ------------------------------------------------------------
    def rows(self, table: str) -> dict[Any, dict[str, Any]]:
        return self.state.rows[table]

    def next_id(self) -> int:
        self.counter += 1
        return self.index * 1_000_000 + self.counter

    def pick(self, table: str) -> Any:
        keys = list(self.rows(table))
        return self.v.r.choice(keys)

    def now(self) -> datetime:
        return datetime.now(UTC)

    # -- the ledger row, in the transaction --------------------------------------------------------
    def _ledger_values(self, tx: Tx) -> dict[str, Any]:
        values = {"writer": self.name, "n": tx.n, "op": tx.op, "api": tx.api, "at": self.now()}
        tx.insert("ledger", {"writer": self.name, "n": tx.n}, values)
        return values

    def _orm_done(self, s: Session, tx: Tx) -> None:
        s.add(Ledger(**self._ledger_values(tx)))
        s.flush()
        self.pending(tx)

    def _core_done(self, w: Any, tx: Tx) -> None:
        w.execute(insert(ledger).values(**self._ledger_values(tx)))
        self.pending(tx)

    # -- customers ---------------------------------------------------------------------------------
    def _customer_values(self) -> dict[str, Any]:
        v = self.v
        return {
            "writer": self.name,
            "email": f"{self.name}.{uuid.UUID(int=v.r.getrandbits(128)).hex[:12]}@example.org",
            "name": v.text(),
            "tier": v.tier(),
            "balance": v.money(),
            "active": v.flag(),
            "signed_up": v.moment(),
            "birthday": v.day(),
            "prefs": v.prefs(),
            "avatar": v.maybe_blob(),
        }

    def _order_values(self, customer_id: int) -> dict[str, Any]:
        return {
            "id": uuid.UUID(int=self.v.r.getrandbits(128), version=4),
            "writer": self.name,
            "customer_id": customer_id,
            "total": self.v.money(),
            "placed_at": self.v.moment(),
            "note": None if self.v.r.random() < 0.3 else self.v.text(6),
        }

    def _line_values(self, order_id: uuid.UUID, line_no: int) -> dict[str, Any]:
        v = self.v
        return {
            "order_id": order_id,
            "line_no": line_no,
            "writer": self.name,
            "sku": f"sku-{v.r.randint(1, 999)}",
            "qty": v.r.randint(1, 50),
            "price": v.money(),
            "gift": v.flag(),
        }

    def orm_new_customer(self, tx: Tx) -> None:
        with self.dw.session() as s:
            c = Customer(**self._customer_values())
            for _ in range(self.v.r.randint(0, 2)):
                vals = self._order_values(0)
                vals.pop("customer_id")
                o = Order(**vals)
                o.lines = [OrderLine(**self._line_values(o.id, i + 1)) for i in range(self.v.r.randint(1, 3))]
                c.orders.append(o)
            s.add(c)
            s.flush()
            tx.insert("customers", {"id": c.id}, row_of(c))
            for o in c.orders:
                tx.insert("orders", {"id": o.id}, row_of(o))
                for ln in o.lines:
                    tx.insert("order_lines", {"order_id": o.id, "line_no": ln.line_no}, row_of(ln))
            self._orm_done(s, tx)

    def core_new_customer(self, tx: Tx) -> None:
        values = self._customer_values()
        with self.dw.begin() as w:
            (row,) = w.execute(insert(customers).values(**values))
            tx.insert("customers", {"id": row["id"]}, {"id": row["id"], **values})
            self._core_done(w, tx)

    def orm_update_customer(self, tx: Tx) -> None:
        (cid,) = self.pick("customers")
        fresh = self._customer_values()
        fields = self.v.r.sample(["name", "tier", "balance", "active", "signed_up", "birthday", "prefs", "avatar"], 3)
        with self.dw.session() as s:
            c = s.get(Customer, cid)
            changes = {f: fresh[f] for f in fields}
            for f, value in changes.items():
                setattr(c, f, value)
            s.flush()
            tx.update("customers", {"id": cid}, changes)
            self._orm_done(s, tx)

    def core_update_customers(self, tx: Tx) -> None:
        keys = self.v.r.sample(sorted(self.rows("customers")), min(3, len(self.rows("customers"))))
        changes = {"balance": self.v.money(), "active": self.v.flag()}
        with self.dw.begin() as w:
            rows = w.execute(update(customers).where(customers.c.id.in_([k[0] for k in keys])).values(**changes))
            for r in rows:
                tx.update("customers", {"id": r["id"]}, changes)
            self._core_done(w, tx)

    def orm_delete_customer(self, tx: Tx) -> None:
        (cid,) = self.pick("customers")
        with self.dw.session() as s:
            s.delete(s.get(Customer, cid))  # the database cascades to orders and lines, nulls documents
            s.flush()
            tx.delete("customers", {"id": cid})
            self._orm_done(s, tx)

    def core_delete_customer(self, tx: Tx) -> None:
        (cid,) = self.pick("customers")
        with self.dw.begin() as w:
            w.execute(delete(customers).where(customers.c.id == cid))
            tx.delete("customers", {"id": cid})
            self._core_done(w, tx)

    # -- orders and lines ---------------------------------------------------------------------------
    def core_new_order(self, tx: Tx) -> None:
        (cid,) = self.pick("customers")
        order = self._order_values(cid)
        items = [self._line_values(order["id"], i + 1) for i in range(self.v.r.randint(1, 4))]
        with self.dw.begin() as w:
            w.execute(insert(orders).values(**order))
            w.execute(insert(lines), items)
            tx.insert("orders", {"id": order["id"]}, order)
            for item in items:
                tx.insert("order_lines", {"order_id": item["order_id"], "line_no": item["line_no"]}, item)
            self._core_done(w, tx)

    def core_update_order(self, tx: Tx) -> None:
        (oid,) = self.pick("orders")
        changes = {"total": self.v.money(), "note": self.v.text(8), "placed_at": self.v.moment()}
        with self.dw.begin() as w:
            w.execute(update(orders).where(orders.c.id == oid).values(**changes))
            tx.update("orders", {"id": oid}, changes)
            self._core_done(w, tx)

    def orm_add_line(self, tx: Tx) -> None:
        (oid,) = self.pick("orders")
        taken = [k[1] for k in self.rows("order_lines") if k[0] == oid]
        with self.dw.session() as s:
            o = s.get(Order, oid)
            item = OrderLine(**self._line_values(oid, max(taken, default=0) + 1))
            o.lines.append(item)
            s.flush()
            tx.insert("order_lines", {"order_id": oid, "line_no": item.line_no}, row_of(item))
            self._orm_done(s, tx)

    def orm_remove_line(self, tx: Tx) -> None:
        oid, line_no = self.pick("order_lines")
        with self.dw.session() as s:
            o = s.get(Order, oid)
            o.lines.remove(next(ln for ln in o.lines if ln.line_no == line_no))  # delete-orphan
            s.flush()
            tx.delete("order_lines", {"order_id": oid, "line_no": line_no})
            self._orm_done(s, tx)

    def orm_delete_order(self, tx: Tx) -> None:
        (oid,) = self.pick("orders")
        with self.dw.session() as s:
            s.delete(s.get(Order, oid))  # the ORM loads and deletes the lines itself
            s.flush()
            tx.delete("orders", {"id": oid})
            self._orm_done(s, tx)

    # -- categories and products -----------------------------------------------------------------------
    def _category_values(self) -> dict[str, Any]:
        mine = list(self.rows("categories"))
        parent = self.v.r.choice(mine)[0] if mine and self.v.r.random() < 0.7 else None
        return {
            "id": self.next_id(),
            "writer": self.name,
            "parent_id": parent,
            "name": self.v.text(),
            "meta": None if self.v.r.random() < 0.3 else {"rank": self.v.r.randint(0, 9), "x": self.v.doc()},
        }

    def orm_new_category(self, tx: Tx) -> None:
        values = self._category_values()
        with self.dw.session() as s:
            c = Category(**values)
            s.add(c)
            s.flush()
            tx.insert("categories", {"id": c.id}, row_of(c))
            self._orm_done(s, tx)

    def core_new_category(self, tx: Tx) -> None:
        values = self._category_values()
        with self.dw.begin() as w:
            w.execute(insert(categories).values(**values))
            tx.insert("categories", {"id": values["id"]}, values)
            self._core_done(w, tx)

    def core_delete_category(self, tx: Tx) -> None:
        (cid,) = self.pick("categories")
        with self.dw.begin() as w:  # the subtree goes with it (self-reference CASCADE); products keep NULL
            w.execute(delete(categories).where(categories.c.id == cid))
            tx.delete("categories", {"id": cid})
            self._core_done(w, tx)

    def orm_new_product(self, tx: Tx) -> None:
        mine = list(self.rows("categories"))
        v = self.v
        with self.dw.session() as s:
            p = Product(
                sku=f"{self.name}-é-{self.next_id()}",
                writer=self.name,
                category_id=v.r.choice(mine)[0] if mine and v.r.random() < 0.8 else None,
                title=v.text(6),
                price=v.money(),
                in_stock=v.flag(),
                released=v.day(),
                updated_at=v.moment(),
            )
            s.add(p)
            s.flush()
            tx.insert("products", {"sku": p.sku}, row_of(p))
            self._orm_done(s, tx)

    def core_update_product(self, tx: Tx) -> None:
        (sku,) = self.pick("products")
        changes = {
            "price": self.v.money(),
            "in_stock": self.v.flag(),
            "released": self.v.day(),
            "updated_at": self.v.moment(),
        }
        with self.dw.begin() as w:
            w.execute(update(products).where(products.c.sku == sku).values(**changes))
            tx.update("products", {"sku": sku}, changes)
            self._core_done(w, tx)

    # shaped like the other ORM deletes: each its own table (pick, Tx and _orm_done are the shared part)
    def orm_delete_product(self, tx: Tx) -> None:
        (sku,) = self.pick("products")
        with self.dw.session() as s:
            s.delete(s.get(Product, sku))
            s.flush()
            tx.delete("products", {"sku": sku})
            self._orm_done(s, tx)

    # -- documents (1 MB of text and 300 KB of bytes each) ---------------------------------------------
    def orm_new_document(self, tx: Tx) -> None:
        owners = list(self.rows("customers"))
        body = self.v.big_text(DOC_TEXT_BYTES)
        blob = self.v.blob(DOC_BLOB_BYTES)
        import hashlib

        with self.dw.session() as s:
            d = Document(
                writer=self.name,
                owner_id=self.v.r.choice(owners)[0] if owners else None,
                title=self.v.text(),
                body=body,
                attachment=blob,
                sha256=hashlib.sha256(blob).hexdigest(),
                created_at=self.v.moment(),
            )
            s.add(d)
            s.flush()
            tx.insert("documents", {"id": d.id}, row_of(d))
            self._orm_done(s, tx)

    def core_update_document(self, tx: Tx) -> None:
        (did,) = self.pick("documents")
        changes = {"title": self.v.text(), "created_at": self.v.moment()}
        with self.dw.begin() as w:
            w.execute(update(documents).where(documents.c.id == did).values(**changes))
            tx.update("documents", {"id": did}, changes)
            self._core_done(w, tx)

    def core_delete_document(self, tx: Tx) -> None:
        (did,) = self.pick("documents")
        with self.dw.begin() as w:
            w.execute(delete(documents).where(documents.c.id == did))
            tx.delete("documents", {"id": did})
            self._core_done(w, tx)
