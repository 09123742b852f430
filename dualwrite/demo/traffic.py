"""Application traffic for the demo: writers and readers going through the adapter, all phases long.

Writers insert new rows (ids assigned by whichever backend is primary), update existing ones and delete
leaf rows, on every captured table; readers fetch by key and list, through `dw.read`, so reads
are routed and shadow-compared by phase. Writers can be paused to take a quiesced verification.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Table, delete, func, insert, select, update

from dualwrite.adapter import DualWriter
from dualwrite.apply.rule import pk_columns
from dualwrite.demo.synth import generate

log = logging.getLogger("dualwrite.demo.traffic")


class Traffic:
    def __init__(
        self,
        dw: DualWriter,
        tables: Sequence[Table],
        *,
        writers: int = 3,
        readers: int = 2,
        write_pause: float = 0.01,
        seed: int = 11,
    ) -> None:
        self.dw, self.tables = dw, list(tables)
        self.writers, self.readers, self.write_pause = writers, readers, write_pause
        self.rng = random.Random(seed)
        self.stats: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.samples: dict[str, str] = {}
        self._stop = threading.Event()
        self._running = threading.Event()
        self._running.set()
        self._idle = threading.Semaphore(0)
        self._threads: list[threading.Thread] = []
        self._serial = 50_000_000
        self._lock = threading.Lock()
        referenced = {fk.referred_table.name for t in self.tables for fk in t.foreign_key_constraints}
        self.leaves = [t for t in self.tables if t.name not in referenced]
        self._parent_keys: dict[str, list[dict[str, Any]]] = {}

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        self._load_parent_keys()
        for i in range(self.writers):
            self._spawn(self._writer, f"writer-{i}")
        for i in range(self.readers):
            self._spawn(self._reader, f"reader-{i}")

    def _spawn(self, target: Any, name: str) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        self._running.set()
        for t in self._threads:
            t.join(timeout=30)

    def pause(self) -> None:
        """Stop writing; returns once every writer is between two writes."""
        self._running.clear()
        for _ in range(self.writers):
            self._idle.acquire(timeout=30)

    def resume(self) -> None:
        self._running.set()

    # -- work ------------------------------------------------------------------------------------
    def _load_parent_keys(self) -> None:
        for table in self.tables:
            with self.dw.backends.sqlite_read.connect() as conn:
                # every column some foreign key points at (composite keys too), plus the primary key
                wanted = (
                    set(pk_columns(table))
                    | {"tenant_id"} & set(table.c.keys())
                    | {
                        e.column.name
                        for t in self.tables
                        for fk in t.foreign_key_constraints
                        if fk.referred_table is table
                        for e in fk.elements
                    }
                )
                cols = [table.c[c] for c in sorted(wanted)]
                rows = conn.execute(select(*cols).order_by(func.random()).limit(500)).mappings().all()
            self._parent_keys[table.name] = [dict(r) for r in rows]

    def _next_serial(self) -> int:
        with self._lock:
            self._serial += 1
            return self._serial

    def _writer(self) -> None:
        rng = random.Random(threading.get_ident())
        while not self._stop.is_set():
            if not self._running.is_set():
                self._idle.release()
                self._running.wait()
                continue
            op = rng.choices(("insert", "update", "delete"), weights=(5, 4, 1))[0]
            table = rng.choice(self.leaves if op == "delete" else self.tables)
            try:
                getattr(self, f"_{op}")(table, rng)
                self.stats[op] += 1
            except Exception as exc:  # noqa: BLE001 - counted and shown in the report
                self.errors[f"{op}:{type(exc).__name__}"] += 1
                self.samples.setdefault(f"{op}:{type(exc).__name__}", f"{table.name}: {str(exc).splitlines()[0][:300]}")
                log.debug("%s on %s failed: %s", op, table.name, str(exc).splitlines()[0])
            time.sleep(self.write_pause)

    def _insert(self, table: Table, rng: random.Random) -> None:
        row = next(generate(table, 1, start=self._next_serial(), parents=self._parent_keys), None)
        if row is None:
            return  # no sampled parent fits this table's keys right now
        for c in pk_columns(table):
            if table.c[c].autoincrement is True or (
                table.c[c].primary_key and len(pk_columns(table)) == 1 and table.c[c].type.python_type is int
            ):
                row.pop(c, None)  # the primary assigns it
        rows = self.dw.execute(insert(table).values(row))
        pool = self._parent_keys.setdefault(table.name, [])
        if rows and len(pool) < 2000:
            keep = pool[0].keys() if pool else (*pk_columns(table), "tenant_id")
            pool.append({k: rows[0][k] for k in keep if k in rows[0]})

    def _pick(self, table: Table, rng: random.Random) -> dict[str, Any] | None:
        pool = self._parent_keys.get(table.name) or []
        return rng.choice(pool) if pool else None

    def _update(self, table: Table, rng: random.Random) -> None:
        key = self._pick(table, rng)
        editable = [
            c
            for c in table.columns
            if not c.primary_key
            and not c.foreign_keys
            and not c.unique
            and c.name != "tenant_id"
            and not _in_unique(table, c.name)
        ]
        if key is None or not editable:
            return
        col = rng.choice(editable)
        value = next(generate(table, 1, start=self._next_serial()))[col.name]
        cond = [table.c[c] == key[c] for c in pk_columns(table)]
        self.dw.execute(update(table).where(*cond).values({col.name: value}))

    def _delete(self, table: Table, rng: random.Random) -> None:
        pool = self._parent_keys.get(table.name) or []
        if len(pool) < 50:
            return
        key = pool.pop(rng.randrange(len(pool)))
        self.dw.execute(delete(table).where(*[table.c[c] == key[c] for c in pk_columns(table)]))

    def _reader(self) -> None:
        rng = random.Random(threading.get_ident() + 1)
        while not self._stop.is_set():
            table = rng.choice(self.tables)
            key = self._pick(table, rng)
            if key is None:
                time.sleep(0.01)
                continue
            pk = pk_columns(table)
            try:
                if rng.random() < 0.7:
                    stmt = select(table).where(*[table.c[c] == key[c] for c in pk])
                    query = "get"
                else:
                    stmt = select(table).where(table.c[pk[0]] >= key[pk[0]]).order_by(*[table.c[c] for c in pk])
                    stmt, query = stmt.limit(20), "list"
                self.dw.read(
                    table.name,
                    query,
                    lambda conn, s=stmt: [dict(r) for r in conn.execute(s).mappings()],
                    params={k: str(v) for k, v in key.items()},
                )
                self.stats["read"] += 1
            except Exception as exc:  # noqa: BLE001
                self.errors[f"read:{type(exc).__name__}"] += 1
            time.sleep(0.005)


def _in_unique(table: Table, column: str) -> bool:
    from sqlalchemy import UniqueConstraint

    return any(isinstance(c, UniqueConstraint) and column in c.columns for c in table.constraints) or any(
        ix.unique and column in ix.columns for ix in table.indexes
    )
