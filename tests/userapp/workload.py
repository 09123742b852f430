"""The application's workload: `Workload.step()` picks one of its transactions (transactions.py) by
weight among those the writer's rows allow, and keeps each table near `population` rows (inserts favoured
below it, deletes above it); `Workload.read()` runs its reads through `dw.read` (ORM sessions and Core; the
read functions are in reads.py).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

from tests.userapp import reads
from tests.userapp.state import State, Tx
from tests.userapp.transactions import Transactions
from tests.userapp.values import Values

# operation -> (api, weight, the table whose population it grows (+) or shrinks (-))
OPERATIONS: dict[str, tuple[str, float, str]] = {
    "orm_new_customer": ("orm", 3, "+customers"),
    "core_new_customer": ("core", 2, "+customers"),
    "orm_update_customer": ("orm", 3, "customers"),
    "core_update_customers": ("core", 1, "customers"),
    "orm_delete_customer": ("orm", 1, "-customers"),
    "core_delete_customer": ("core", 1, "-customers"),
    "core_new_order": ("core", 2, "+orders"),
    "core_update_order": ("core", 2, "orders"),
    "orm_add_line": ("orm", 2, "+order_lines"),
    "orm_remove_line": ("orm", 1, "-order_lines"),
    "orm_delete_order": ("orm", 1, "-orders"),
    "orm_new_category": ("orm", 1, "+categories"),
    "core_new_category": ("core", 1, "+categories"),
    "core_delete_category": ("core", 0.5, "-categories"),
    "orm_new_product": ("orm", 2, "+products"),
    "core_update_product": ("core", 2, "products"),
    "orm_delete_product": ("orm", 0.5, "-products"),
    "orm_new_document": ("orm", 0.3, "+documents"),
    "core_update_document": ("core", 0.5, "documents"),
    "core_delete_document": ("core", 0.3, "-documents"),
}


class Workload(Transactions):
    def __init__(
        self,
        dw: Any,
        name: str,
        index: int,
        state: State,
        *,
        seed: int | str = 0,
        apis: tuple[str, ...] = ("orm", "core"),
        population: int = 60,
        documents: float = 1.0,
        pending: Callable[[Tx], None] = lambda tx: None,
    ) -> None:
        """`index`: this writer's number (0-2000), the high digits of the integer keys it chooses;
        `documents`: weight factor of the 1 MB documents (0: none); `pending(tx)` is called inside each
        transaction just before it commits (the writer logs the intent there)."""
        self.dw, self.name, self.index, self.state = dw, name, index, state
        self.v = Values(f"{seed}:{name}")
        self.population, self.pending = population, pending
        self.weights = {
            op: w * (documents if "document" in op else 1.0) for op, (api, w, _t) in OPERATIONS.items() if api in apis
        }
        self.n = 0
        self.counter = 0
        self.last_query = ""  # the query of the last read()

    # -- choosing --------------------------------------------------------------------------------
    def feasible(self, op: str) -> bool:
        need = {
            "customers": [
                "orm_update_customer",
                "core_update_customers",
                "orm_delete_customer",
                "core_delete_customer",
                "core_new_order",
            ],
            "orders": ["core_update_order", "orm_add_line", "orm_delete_order"],
            "order_lines": ["orm_remove_line"],
            "categories": ["core_delete_category"],
            "products": ["core_update_product", "orm_delete_product"],
            "documents": ["core_update_document", "core_delete_document"],
        }
        return all(self.rows(t) for t, ops in need.items() if op in ops)

    def choose(self) -> str:
        ops, weights = [], []
        for op, w in self.weights.items():
            if w <= 0 or not self.feasible(op):
                continue
            table = OPERATIONS[op][2]
            n = len(self.rows(table.lstrip("+-")))
            if table.startswith("+"):
                w *= 2.0 if n < self.population else 0.3
            elif table.startswith("-"):
                w *= 2.0 if n > self.population else 0.3
            ops.append(op)
            weights.append(w)
        return self.v.r.choices(ops, weights)[0]

    def step(self, op: str | None = None) -> Tx:
        """Run one transaction; on success it is applied to the writer's state. Raises what the write raised
        (the Tx is then in doubt: see Writer)."""
        op = op or self.choose()
        self.n += 1
        tx = Tx(self.name, self.n, op, OPERATIONS[op][0], t0=time.time())
        getattr(self, op)(tx)
        return tx

    # -- reads ----------------------------------------------------------------------------------------
    def read(self) -> bool:
        """One read through dw.read (ORM or Core: the writer's customers, their orders, its oldest ledger
        rows); True when it returned what the writer's own rows say it must (a read from either backend must
        agree with them)."""
        pick = self.v.r.random()
        if pick < 0.2:
            want_n = sorted(n for _w, n in self.rows("ledger"))[: reads.PAGE]
            history = functools.partial(reads.ledger_page, writer=self.name)
            self.last_query = "ledger_page"
            got_n = [row.n for row in self.dw.read("shop", "ledger_page", history, orm=True)]
            return got_n == want_n
        if pick < 0.6:
            want = sorted(k[0] for k in self.rows("customers"))[: reads.PAGE]
            page = functools.partial(reads.customer_page, writer=self.name)
            self.last_query = "customer_page"
            got = self.dw.read("shop", "customer_page", page, orm=True)
            return [c.id for c in got] == want
        counts: dict[int, int] = {}
        for oid in self.rows("orders"):
            cid = self.rows("orders")[oid]["customer_id"]
            counts[cid] = counts.get(cid, 0) + 1
        per_customer = functools.partial(reads.orders_per_customer, writer=self.name)
        self.last_query = "orders_per_customer"
        got = self.dw.read("shop", "orders_per_customer", per_customer, ordered=False)
        return {r.customer_id: r.n for r in got} == counts
