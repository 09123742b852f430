"""Which rows a statement on a session's connection changes, from the statement itself (see orm.py).

Every INSERT, UPDATE and DELETE the connection executes while a captured session is open passes through
`StatementCapture.before` / `.after` (SQLAlchemy's before_execute / after_execute connection events): the
unit of work's own statements (objects added, changed, deleted, orphans and cascades the ORM resolves,
association rows of many-to-many relationships, post_update rows of self-references) and the legacy bulk
methods. Each statement names the keys it touches:

- INSERT: from its parameters (the unit of work binds every column by key), else from the primary keys
  the statement returned (`inserted_primary_key_rows`);
- UPDATE / DELETE: from a WHERE clause that pins every primary-key column (`pk = :param`, as the unit of
  work writes it), else by reading the rows the WHERE clause matches first (locked on Postgres, and the
  statement then confined to them, as WriteTx does); an UPDATE's new key from its SET values;
- rows the database's referential actions reach (ON DELETE / ON UPDATE, e.g. `passive_deletes`): watched
  around the statement (cascade.py).

The keys are resolved once, at the end of the session (`resolve`): each is read again, and becomes an
upsert with its stored image or, when the row is gone, a delete. A key touched and then rolled back
(a failed flush, a nested savepoint) simply yields its current state. What cannot be told (a key set
from an expression, an upsert on another conflict target without its key, raw SQL text) is refused
with one line rather than left uncaptured.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import Delete, Insert, Table, TextClause, Update, false, select
from sqlalchemy.sql import operators, visitors
from sqlalchemy.sql.elements import BinaryExpression, BindParameter, BooleanClauseList, ColumnElement

from dualwrite import cascade
from dualwrite.apply.statements import pk_columns
from dualwrite.capture import events_from_rows
from dualwrite.errors import DualwriteError
from dualwrite.normalize import Normalizer, canonical_text

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from dualwrite.capture import WriteTx

_DML_TEXT = re.compile(r"^\s*(?:WITH\b.*?\)\s*)?(INSERT|UPDATE|DELETE|REPLACE|MERGE|UPSERT)\b", re.I | re.S)


class UncapturableStatementError(DualwriteError):
    """A statement in dw.session() whose changed rows cannot be named: refused, never left uncaptured."""


class StatementCapture:
    """The keys the statements on one connection touch (while `active`), resolved into events at the end."""

    def __init__(self, tx: WriteTx) -> None:
        self.tx = tx
        # table name -> (table, exact key text -> key): the parameters' and the database's values of one key
        # can differ in type (aware/naive datetime, Decimal/int), so keys are compared in a normalized form
        self.touched: dict[str, tuple[Table, dict[str, dict[str, Any]]]] = {}
        self.gone: dict[tuple[str, str], dict[str, Any]] = {}  # last image read of rows that may be deleted
        self._inflight: dict[int, tuple[Table, list[dict[str, Any]] | None, cascade.Watch | None, bool]] = {}

    # -- connection events --------------------------------------------------------------------------
    def before(self, conn: Connection, clause: Any, multiparams: Any, params: Any, _options: Any) -> Any:
        if self.tx.busy:  # WriteTx's own statement (session.execute(...) routed there): captured by it
            return clause, multiparams, params
        if isinstance(clause, TextClause) and _DML_TEXT.match(clause.text):
            raise UncapturableStatementError(
                "raw SQL text that changes rows is not captured in dw.session(): write it with insert()/"
                "update()/delete() (session.execute or tx.execute), which are"
            )
        if not isinstance(clause, Insert | Update | Delete):
            return clause, multiparams, params
        table = clause.table
        if not isinstance(table, Table):
            raise UncapturableStatementError("dualwrite captures statements on a plain Table (not a join or alias)")
        table = table._deannotate()  # noqa: SLF001 - an ORM statement's annotated copy: the Table itself
        self.tx.tables.table(table.name)  # UnknownTableError: an uncaptured table would be lost
        rows = _param_rows(multiparams, params)
        if isinstance(clause, Insert):
            cascade.refuse_upsert_into_referenced(clause, table, self.tx.tables.referrers().get(table.name, []))
            keys = [_insert_key(clause, table, r) for r in rows]
            if any(k is None for k in keys) and getattr(clause, "_post_values_clause", None) is not None:
                raise UncapturableStatementError(
                    f"an upsert into {table.name!r} without its primary key cannot name the row it changes: "
                    "give the key, or use tx.upsert() in dw.begin()"
                )
            known = [k for k in keys if k is not None]
            self._touch(table, known)
            if len(known) < len(keys):  # the database makes the keys: read them from the result
                self._inflight[id(clause)] = (table, None, None, True)
            return clause, multiparams, params
        return self._before_change(conn, clause, table, rows, multiparams, params)

    def after(self, conn: Connection, clause: Any, _multi: Any, _params: Any, _options: Any, result: Any) -> None:
        if self.tx.busy:
            return
        entry = self._inflight.pop(id(clause), None)
        if entry is None:
            return
        table, new_keys, watched, missing_insert_keys = entry
        if missing_insert_keys:
            try:
                pks = result.inserted_primary_key_rows
            except Exception as exc:  # noqa: BLE001 - reported as the refusal it is
                raise UncapturableStatementError(
                    f"an INSERT into {table.name!r} whose keys the database generated did not return them: "
                    f"{exc}; give the keys, or use tx.execute() in dw.begin()"
                ) from None
            pk = pk_columns(table)
            self._touch(table, [dict(zip(pk, row, strict=True)) for row in pks if row is not None])
            return
        if new_keys is not None:
            self._touch(table, new_keys)
        if watched:
            parents = _read(conn, table, new_keys or []) if watched.follow else []
            for child, op, image in cascade.changes_after(conn, watched, parents):
                pk = pk_columns(child)
                key = {c: image[c] for c in pk}
                self._touch(child, [key])
                if op == "delete":
                    self.gone[(child.name, _kt(key[c] for c in pk))] = image

    # -- UPDATE / DELETE --------------------------------------------------------------------------------
    def _before_change(
        self, conn: Connection, clause: Update | Delete, table: Table, rows: list[dict[str, Any]], multi: Any, p: Any
    ) -> Any:
        pk = pk_columns(table)
        deleting = isinstance(clause, Delete)
        refs = self.tx.tables.referrers().get(table.name, [])
        sets = set() if deleting else _set_columns(clause, rows)
        pinned = _pinned_keys(clause, table, rows)
        confined = clause
        if pinned is None:  # read what the WHERE clause matches (locked), then hold the statement to it
            found = [
                dict(r)
                for params in rows or [{}]
                for r in conn.execute(_locked(conn, select(table).where(clause.whereclause), table), params).mappings()
            ]
            keys = list({tuple(r[c] for c in pk): {c: r[c] for c in pk} for r in found}.values())
            if conn.dialect.name == "postgresql":
                values = [tuple(k[c] for c in pk) for k in keys]
                confined = clause.where(cascade.key_in(conn, table, pk, values) if values else false())
        else:
            keys = pinned
        self._touch(table, keys)
        needs_rows = deleting or bool(set(pk) & sets) or any(r.onupdate and set(r.parent_cols) & sets for r in refs)
        before = _read(conn, table, keys) if needs_rows else []
        for r in before:
            self.gone[(table.name, _kt(r[c] for c in pk))] = r
        new_keys: list[dict[str, Any]] | None = None
        if not deleting and set(pk) & sets:
            new_keys = [_new_key(clause, table, rows[i] if i < len(rows) else {}, k) for i, k in enumerate(keys)]
            if len(rows) > 1 and pinned is None:
                raise UncapturableStatementError(
                    f"an executemany UPDATE of {table.name!r} that changes primary keys cannot be captured"
                )
        elif not deleting:
            new_keys = keys
        acting = [r for r in refs if (r.ondelete if deleting else r.onupdate and set(r.parent_cols) & sets)]
        watched = cascade.watch(conn, self.tx.tables.referrers(), table, before, delete=deleting, changed=sets)
        if acting or new_keys is not None:
            self._inflight[id(confined)] = (table, new_keys, watched or None, False)
        return confined, multi, p

    def _touch(self, table: Table, keys: Sequence[Mapping[str, Any]]) -> None:
        pk = pk_columns(table)
        bucket = self.touched.setdefault(table.name, (table, {}))[1]
        for key in keys:
            bucket.setdefault(_kt(key[c] for c in pk), dict(key))

    # -- the end of the session -------------------------------------------------------------------------
    def resolve(self, conn: Connection) -> None:
        """Every key touched: an upsert of its stored row, or a delete when it is gone (tx.events)."""
        for name, (table, keys) in self.touched.items():
            pk = pk_columns(table)
            rows = _read(conn, table, list(keys.values()), lock=False)
            now = {_kt(r[c] for c in pk) for r in rows}
            self.tx.events.extend(events_from_rows(table, "upsert", rows))
            for kt, key in keys.items():
                if kt not in now:
                    image = self.gone.get((name, kt)) or {**dict.fromkeys(c.name for c in table.columns), **key}
                    self.tx.events.extend(events_from_rows(table, "delete", [image]))
            if keys:
                self.tx.ops.add("orm")
        self.touched.clear()
        self.gone.clear()


_EXACT = Normalizer(float_digits=17, strip_trailing_spaces=False, parse_json_text=False)


def _kt(values: Any) -> str:
    """A key's values in the exact normalized form (naive datetimes as UTC, numbers by value)."""
    return canonical_text([_EXACT.normalize(v) for v in values])


def _param_rows(multiparams: Any, params: Any) -> list[dict[str, Any]]:
    if multiparams:
        return [dict(m) for m in multiparams if isinstance(m, Mapping)]
    return [dict(params)] if params else []


def _bound(value: Any) -> tuple[bool, Any]:
    """(True, value) for a literal or a bound parameter with a value; (False, None) for an expression."""
    if isinstance(value, BindParameter):
        return (value.value is not None or not value.required), value.value
    if isinstance(value, ColumnElement):
        return False, None
    return True, value


def _values_of(clause: Insert | Update) -> dict[str, Any]:
    """The statement's own .values() by column key (not its executemany parameters)."""
    return {str(getattr(k, "key", k)): v for k, v in (clause._values or {}).items()}  # noqa: SLF001


def _insert_key(clause: Insert, table: Table, row: Mapping[str, Any]) -> dict[str, Any] | None:
    values = _values_of(clause)
    key: dict[str, Any] = {}
    for name in pk_columns(table):
        col = table.c[name]
        if col.key in row:
            key[name] = row[col.key]
        elif col.key in values:
            ok, value = _bound(values[col.key])
            if not ok:
                return None
            key[name] = value
        else:
            return None
    return key


def _where_binds(clause: Update | Delete) -> set[str]:
    where = clause.whereclause
    return set() if where is None else {e.key for e in visitors.iterate(where) if isinstance(e, BindParameter)}


def _set_columns(clause: Update, rows: list[dict[str, Any]]) -> set[str]:
    """Names of the columns an UPDATE sets: its .values() and the parameters that are no WHERE binds."""
    by_key = {c.key: c.name for c in clause.table.columns}
    names = {by_key.get(k, k) for k in _values_of(clause)}
    binds = _where_binds(clause)
    for r in rows:
        names |= {by_key[k] for k in r if k in by_key and k not in binds}
    return names


def _pinned_keys(clause: Update | Delete, table: Table, rows: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """The keys of a WHERE clause that is an AND of `pk column = literal or parameter` for every key
    column (the unit of work's form), one per parameter set; None when it is anything else."""
    where = clause.whereclause
    if where is None:
        return None
    terms = (
        list(where.clauses) if isinstance(where, BooleanClauseList) and where.operator is operators.and_ else [where]
    )
    binds: dict[str, Any] = {}
    for term in terms:
        if not (isinstance(term, BinaryExpression) and term.operator is operators.eq):
            continue
        left, right = term.left, term.right
        if isinstance(right, BinaryExpression | BooleanClauseList):
            continue
        if getattr(left, "table", None) is not None and left.table._deannotate() is table:  # noqa: SLF001
            binds.setdefault(left.name, right)
    if not set(pk_columns(table)) <= set(binds):
        return None
    out = []
    for params in rows or [{}]:
        key = {}
        for name in pk_columns(table):
            ref = binds[name]
            if isinstance(ref, BindParameter) and ref.key in params:
                key[name] = params[ref.key]
            else:
                ok, value = _bound(ref)
                if not ok:
                    return None
                key[name] = value
        out.append(key)
    return out


def _new_key(clause: Update, table: Table, params: Mapping[str, Any], old: Mapping[str, Any]) -> dict[str, Any]:
    values = _values_of(clause)
    binds = _where_binds(clause)
    key = dict(old)
    for name in pk_columns(table):
        col = table.c[name]
        if col.key in params and col.key not in binds:
            key[name] = params[col.key]
        elif col.key in values:
            ok, value = _bound(values[col.key])
            if not ok:
                raise UncapturableStatementError(
                    f"an UPDATE of {table.name!r} that sets primary-key column {name!r} from an expression cannot "
                    "be captured in dw.session(): use tx.execute() in dw.begin() (RETURNING names the new key)"
                )
            key[name] = value
    return key


def _locked(conn: Connection, query: Any, table: Table) -> Any:
    return query.with_for_update(of=table) if conn.dialect.name == "postgresql" else query


def _read(conn: Connection, table: Table, keys: Sequence[Mapping[str, Any]], *, lock: bool = True) -> list[dict]:
    pk = pk_columns(table)
    values = [tuple(k[c] for c in pk) for k in keys]
    rows: list[dict[str, Any]] = []
    for i in range(0, len(values), cascade.CHUNK):
        query = select(table).where(cascade.key_in(conn, table, pk, values[i : i + cascade.CHUNK]))
        rows.extend(dict(r) for r in conn.execute(_locked(conn, query, table) if lock else query).mappings())
    return rows
