"""What the databases must hold, worked out from the writers' logs alone.

A log holds each transaction's intended changes (insert a full row, update some columns of a key,
delete a key); the database's referential actions are not logged but follow from the models: deleting
a row here deletes the rows whose ON DELETE CASCADE foreign keys reference it (recursively) and nulls
the ON DELETE SET NULL ones, as the database does. Nothing is read from a database except, for a
transaction whose outcome its writer did not learn (an error at commit, a kill), whether its ledger row
exists (`resolve`).

    state = State.from_logs(Schema.of(models.metadata), [path1, path2, path3], resolve=ledger_lookup(engine))

The log format (JSON lines, one writer per file, see writer.py):
    {"writer": "w1", "n": 7, "status": "pending", "op": "...", "api": "orm", "t0": ..., "changes": [
        {"table": "customers", "op": "insert", "key": {"id": 5}, "values": {...every column...}},
        {"table": "orders", "op": "update", "key": {"id": {"$uuid": ...}}, "values": {"total": ...}},
        {"table": "categories", "op": "delete", "key": {"id": 3}}]}
    {"writer": "w1", "n": 7, "status": "committed", "ms": 3.2}     (or "failed" with "error")
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum as PyEnum
from pathlib import Path
from typing import Any

from sqlalchemy import Enum, MetaData, Table

from tests.userapp import codec

Key = tuple[Any, ...]


class LogError(AssertionError):
    """The log contradicts itself (a row inserted twice, a change to a row that is not there)."""


@dataclass(frozen=True)
class Referrer:
    child: str
    child_cols: tuple[str, ...]
    parent_cols: tuple[str, ...]
    ondelete: str  # CASCADE | SET NULL


@dataclass
class Schema:
    """The parts of a MetaData the expected state needs: keys, referential actions, enum columns."""

    tables: dict[str, Table]
    pk: dict[str, tuple[str, ...]]
    referrers: dict[str, list[Referrer]]
    enums: dict[str, dict[str, type[PyEnum]]]

    @classmethod
    def of(cls, metadata: MetaData) -> Schema:
        tables = {t.name: t for t in metadata.sorted_tables}
        pk = {n: tuple(c.name for c in t.primary_key.columns) for n, t in tables.items()}
        referrers: dict[str, list[Referrer]] = {n: [] for n in tables}
        enums: dict[str, dict[str, type[PyEnum]]] = {}
        for name, t in tables.items():
            for fk in t.foreign_key_constraints:
                action = (fk.ondelete or "").upper()
                if action in ("CASCADE", "SET NULL"):
                    parent = fk.referred_table.name
                    referrers[parent].append(
                        Referrer(
                            name, tuple(c.name for c in fk.columns), tuple(e.column.name for e in fk.elements), action
                        )
                    )
            enums[name] = {
                c.name: c.type.enum_class for c in t.columns if isinstance(c.type, Enum) and c.type.enum_class
            }
        return cls(tables, pk, referrers, enums)


@dataclass
class Change:
    table: str
    op: str  # insert | update | delete
    key: dict[str, Any]
    values: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"table": self.table, "op": self.op, "key": codec.encode_row(self.key)}
        if self.values is not None:
            out["values"] = codec.encode_row(self.values)
        return out

    @classmethod
    def from_json(cls, doc: dict[str, Any], schema: Schema) -> Change:
        enums = schema.enums.get(doc["table"], {})
        dec = lambda row: {k: codec.decode(v, enums, k) for k, v in row.items()}  # noqa: E731
        return cls(doc["table"], doc["op"], dec(doc["key"]), dec(doc["values"]) if "values" in doc else None)


@dataclass
class Tx:
    writer: str
    n: int
    op: str
    api: str
    changes: list[Change] = field(default_factory=list)
    status: str = "pending"  # pending | committed | failed
    error: str | None = None
    t0: float = 0.0
    ms: float | None = None

    def insert(self, table: str, key: dict[str, Any], values: dict[str, Any]) -> None:
        self.changes.append(Change(table, "insert", key, values))

    def update(self, table: str, key: dict[str, Any], values: dict[str, Any]) -> None:
        self.changes.append(Change(table, "update", key, values))

    def delete(self, table: str, key: dict[str, Any]) -> None:
        self.changes.append(Change(table, "delete", key))

    def pending_json(self) -> dict[str, Any]:
        return {
            "writer": self.writer,
            "n": self.n,
            "status": "pending",
            "op": self.op,
            "api": self.api,
            "t0": self.t0,
            "changes": [c.to_json() for c in self.changes],
        }


class State:
    """Rows per table, keyed by primary key tuple, with the database's referential actions."""

    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        self.rows: dict[str, dict[Key, dict[str, Any]]] = {name: {} for name in schema.tables}

    def key(self, table: str, key: dict[str, Any]) -> Key:
        return tuple(key[c] for c in self.schema.pk[table])

    def apply(self, change: Change) -> None:
        rows, k = self.rows[change.table], self.key(change.table, change.key)
        if change.op == "insert":
            if k in rows:
                raise LogError(f"{change.table}{list(k)} inserted twice")
            missing = set(self.schema.tables[change.table].c.keys()) - set(change.values or {})
            if missing:
                raise LogError(f"{change.table}{list(k)} inserted without {', '.join(sorted(missing))}")
            rows[k] = dict(change.values or {})
        elif change.op == "update":
            if k not in rows:
                raise LogError(f"{change.table}{list(k)} updated but not there")
            row = rows.pop(k)
            row.update(change.values or {})
            rows[self.key(change.table, row)] = row
        elif change.op == "delete":
            if k not in rows:
                raise LogError(f"{change.table}{list(k)} deleted but not there")
            self._delete(change.table, k)
        else:
            raise LogError(f"unknown op {change.op!r}")

    def _delete(self, table: str, key: Key) -> None:
        row = self.rows[table].pop(key)
        for ref in self.schema.referrers[table]:
            wanted = tuple(row[c] for c in ref.parent_cols)
            children = [k for k, r in self.rows[ref.child].items() if tuple(r[c] for c in ref.child_cols) == wanted]
            for ck in children:
                if ck not in self.rows[ref.child]:  # already gone through another path of the cascade
                    continue
                if ref.ondelete == "CASCADE":
                    self._delete(ref.child, ck)
                else:
                    for c in ref.child_cols:
                        self.rows[ref.child][ck][c] = None

    def apply_tx(self, tx: Tx) -> None:
        for change in tx.changes:
            self.apply(change)

    def count(self) -> int:
        return sum(len(r) for r in self.rows.values())

    # -- from logs -------------------------------------------------------------------------------------
    @classmethod
    def from_logs(
        cls,
        schema: Schema,
        paths: Iterable[str | Path],
        *,
        resolve: Callable[[str, int], bool] | None = None,
    ) -> State:
        """Every committed transaction of every log applied in its writer's order. A transaction without
        a final "committed" (failed, or cut off by a kill) is applied if `resolve(writer, n)` says its
        ledger row exists; without `resolve` such a transaction is an error.

        Each writer's rows are worked out apart and then put together: a writer changes only its own rows,
        but a key the database generates may be handed out again after another writer deleted its row
        (SQLite reuses the largest rowid), and the logs do not say in which order two writers committed.
        A key that two writers both hold at the end is an error."""
        merged = cls(schema)
        owner: dict[tuple[str, Key], str] = {}
        for path in paths:
            mine, writer = cls(schema), str(path)
            for tx in read_log(path, schema):
                if tx.status == "committed" or _resolved(resolve, tx):
                    mine.apply_tx(tx)
                writer = tx.writer
            for table, rows in mine.rows.items():
                for key, row in rows.items():
                    if (table, key) in owner:
                        raise LogError(f"{table}{list(key)} is held by both {owner[table, key]} and {writer}")
                    owner[table, key] = writer
                    merged.rows[table][key] = row
        return merged


def _resolved(resolve: Callable[[str, int], bool] | None, tx: Tx) -> bool:
    if resolve is None:
        raise LogError(f"{tx.writer} transaction {tx.n} ({tx.op}) ended {tx.status}: give resolve= to look it up")
    return resolve(tx.writer, tx.n)


def read_log(path: str | Path, schema: Schema) -> list[Tx]:
    """The transactions of one log in order, each with its final status."""
    txs: dict[int, Tx] = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut off by a kill: its transaction stays pending (in doubt)
            n = doc["n"]
            if doc["status"] == "pending":
                txs[n] = Tx(
                    doc["writer"],
                    n,
                    doc["op"],
                    doc["api"],
                    [Change.from_json(c, schema) for c in doc["changes"]],
                    t0=doc.get("t0", 0.0),
                )
            elif n in txs:
                txs[n].status, txs[n].error, txs[n].ms = doc["status"], doc.get("error"), doc.get("ms")
    return [txs[n] for n in sorted(txs)]
