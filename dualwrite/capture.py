"""Change capture on the primary: `WriteTx` runs statements with RETURNING and turns the row images into
events (with the rows that referential actions change, see cascade.py), and `write_outbox` stores them
in the same transaction with their commit-ordered `seq`."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Connection, Delete, Enum, Insert, Table, Update, false, select
from sqlalchemy.engine import Dialect, RowMapping
from sqlalchemy.exc import DBAPIError

from dualwrite import cascade, fast_insert
from dualwrite.apply.statements import pk_columns
from dualwrite.bookkeeping import dialect_insert, outbox
from dualwrite.events import ChangeEvent, check_size
from dualwrite.phase import Phase
from dualwrite.tables import Tables
from dualwrite.types import as_utc, timezone_aware, utcnow

TENANT_COLUMNS = ("tenant_id", "tenant")


class WriteTx:
    """One transaction on the primary. Every statement's row images become change events."""

    def __init__(self, conn: Connection, phase: Phase, tables: Tables) -> None:
        self.connection, self.phase, self.tables = conn, phase, tables
        self.events: list[ChangeEvent] = []
        self.ops: set[str] = set()
        self.busy = False  # inside execute(): a captured session's statement listener leaves it to us (orm.py)

    def execute(
        self, stmt: Insert | Update | Delete, params: list[dict[str, Any]] | dict[str, Any] | None = None
    ) -> list[RowMapping]:
        busy, self.busy = self.busy, True
        try:
            return self._execute(stmt, params)
        finally:
            self.busy = busy

    def _execute(self, stmt: Insert | Update | Delete, params: Any) -> list[RowMapping]:
        table = statement_table(stmt)
        self.tables.table(table.name)  # UnknownTableError: an uncaptured table would be lost
        before, watched, stmt = self._rows_before(stmt, table, params)
        raw = fast_insert.run(self.connection, stmt, table, params, with_returning)  # type: ignore[arg-type]
        if raw is None:
            returning = with_returning(stmt)
            result = self.connection.execute(returning, params) if params else self.connection.execute(returning)
            raw = result.all()
        rows = [r._mapping for r in raw]  # what the caller gets
        if watched:  # rows changed by the database's referential actions, which RETURNING does not report
            for child, op, image in cascade.changes_after(self.connection, watched, rows):
                self.events.extend(events_from_rows(child, op, [image]))  # type: ignore[list-item]
        if before and isinstance(stmt, Update):
            pk = pk_columns(table)
            after = {tuple(r[c] for c in pk) for r in rows}
            moved = [r for r in before if tuple(r[c] for c in pk) not in after]
            self.events.extend(events_from_rows(table, "delete", moved))
        self.events.extend(events_from_images(table, op_of(stmt), [image_of(table, r) for r in raw]))
        self.ops.add(stmt.__visit_name__)
        return rows

    def _rows_before(
        self, stmt: Insert | Update | Delete, table: Table, params: Any
    ) -> tuple[list[RowMapping] | None, cascade.Watch | None, Any]:
        """The rows a statement is about to change, read (locked) first when RETURNING is not enough: an
        UPDATE of a primary key (RETURNING only gives the new images, so the old key needs a delete) and
        any statement that fires referential actions (their rows are watched, see cascade.py).
        Returns them, the watch, and the statement to run."""
        refs = self.tables.referrers().get(table.name, [])
        if isinstance(stmt, Insert):
            cascade.refuse_upsert_into_referenced(stmt, table, refs)
            return None, None, stmt
        if isinstance(stmt, Delete):
            if not any(r.ondelete for r in refs):
                return None, None, stmt
            names: set[str] = set()
        else:
            values = list(stmt._values or {})  # noqa: SLF001 - the SET clause (values() and ordered_values())
            names = {str(getattr(k, "key", getattr(k, "name", k))) for k in values}
            if isinstance(params, dict):
                names |= set(params)
            referenced = {c for r in refs if r.onupdate for c in r.parent_cols}
            if not (set(pk_columns(table)) | referenced) & names:
                return None, None, stmt
        query = select(table)
        if stmt.whereclause is not None:
            query = query.where(stmt.whereclause)
        if self.connection.dialect.name == "postgresql":
            query = query.with_for_update(of=table)
        rows = [
            r
            for p in (params if isinstance(params, list) else [params or {}])
            for r in self.connection.execute(query, p).mappings()
        ]
        watched = cascade.watch(
            self.connection, self.tables.referrers(), table, rows, delete=isinstance(stmt, Delete), changed=names
        )
        if self.connection.dialect.name == "postgresql":
            # Read committed: the statement takes a new snapshot and could also reach rows committed after
            # the read above, whose old keys or cascades nobody saw. Confine it to the rows read (and locked).
            pk = pk_columns(table)
            keys = list(dict.fromkeys(tuple(r[c] for c in pk) for r in rows))
            stmt = stmt.where(cascade.key_in(self.connection, table, pk, keys) if keys else false())
        return rows, watched or None, stmt

    def upsert(
        self,
        table: Table,
        values: dict[str, Any] | list[dict[str, Any]],
        conflict: list[str],
        update: list[str] | None = None,
    ) -> list[RowMapping]:
        """INSERT ... ON CONFLICT (conflict) DO UPDATE SET update (default: every other column)."""
        ins = dialect_insert(self.connection, table).values(values)
        cols = (
            update
            if update is not None
            else [c.name for c in table.columns if c.name not in conflict and c.name not in pk_columns(table)]
        )
        stmt = (
            ins.on_conflict_do_update(index_elements=conflict, set_={c: ins.excluded[c] for c in cols})
            if cols
            else ins.on_conflict_do_nothing(index_elements=conflict)
        )
        rows = self.execute(stmt)
        self.ops.discard("insert")
        self.ops.add("upsert")
        return rows


def statement_table(stmt: Insert | Update | Delete) -> Table:
    table = stmt.table
    if not isinstance(table, Table):
        raise TypeError("dualwrite captures statements on a plain Table (not a join or alias)")
    return table._deannotate()  # type: ignore[return-value]  # an ORM statement's annotated copy: the Table


def with_returning(stmt: Insert | Update | Delete) -> Insert | Update | Delete:
    if stmt._returning:  # noqa: SLF001 - the adapter owns RETURNING; a user's would be replaced silently
        raise ValueError("do not add .returning(): the adapter returns the full row images itself")
    # the table, not its columns one by one: the same RETURNING list, a fraction of the cache-key work
    return stmt.returning(statement_table(stmt))


def op_of(stmt: Insert | Update | Delete) -> str:
    return "delete" if isinstance(stmt, Delete) else "upsert"


_Stored = dict[str, dict[Any, str]]
_shapes: dict[int, tuple[Table, tuple[str, ...], tuple[str, ...], str | None, _Stored, tuple[str, ...]]] = {}


def _shape(table: Table) -> tuple[tuple[str, ...], tuple[str, ...], str | None, _Stored, tuple[str, ...]]:
    """(column names, key columns, tenant column, enum columns, timezone-aware columns) of a table, worked
    out once."""
    hit = _shapes.get(id(table))
    if hit is None or hit[0] is not table:
        names = tuple(c.name for c in table.columns)
        tenant = next((c for c in TENANT_COLUMNS if c in names), None)
        aware = tuple(c.name for c in table.columns if timezone_aware(c.type))
        hit = _shapes[id(table)] = (table, names, pk_columns(table), tenant, _enum_columns(table), aware)
    return hit[1], hit[2], hit[3], hit[4], hit[5]


def _enum_columns(table: Table) -> _Stored:
    """Per Enum column with a Python enum class: member -> the string the database stores. Images carry
    that string (an event holds stored values; the Enum type binds it back unchanged on either side)."""
    out: _Stored = {}
    for col in table.columns:
        t = col.type
        if isinstance(t, Enum) and t.enum_class is not None:
            members = t.enum_class.__members__
            out[col.name] = {members[name]: stored for name, stored in zip(members, t.enums, strict=False)}
    return out


def events_from_rows(table: Table, op: str, rows: Sequence[Any]) -> list[ChangeEvent]:
    """Events from rows addressable by column name (RowMapping, dict)."""
    names = _shape(table)[0]
    return events_from_images(table, op, [{c: row[c] for c in names} for row in rows])


def image_of(table: Table, row: Sequence[Any]) -> dict[str, Any]:
    """The image of a row of `RETURNING <table>` (its columns in table order)."""
    return dict(zip(_shape(table)[0], row, strict=True))


def events_from_images(table: Table, op: str, images: Sequence[dict[str, Any]]) -> list[ChangeEvent]:
    """Events of row images. Values of timezone-aware columns are made aware UTC in the image (modified in
    place; the one time-zone rule of types.py: SQLite hands them back naive); the key keeps the stored
    values, since its text is the version key the backfill computes from the same SQLite rows."""
    _names, pk, tenant_col, enums, aware = _shape(table)
    events = []
    for image in images:
        for col, stored in enums.items():
            if image.get(col) is not None:
                image[col] = stored.get(image[col], image[col])
        key = {c: image[c] for c in pk}
        for c in aware:
            image[c] = as_utc(image[c])
        tenant = None if tenant_col is None else image[tenant_col]
        events.append(
            ChangeEvent(
                table=table.name,
                op=op,
                key=key,
                image=image if op == "upsert" else None,
                tenant=None if tenant is None else str(tenant),
            )
        )
    return events


def check_primary(conn: Connection) -> bool:
    """Inside the write transaction: is this side still the primary? Takes a lock the switch conflicts with."""
    # Postgres: FOR SHARE, so the switch's UPDATE waits for us. SQLite: BEGIN IMMEDIATE already holds the
    # database's write lock. Plain SQL: this runs on every write and needs no compiling.
    sql = _CHECK_PG if conn.dialect.name == "postgresql" else _CHECK_SQLITE
    return _scalar(conn, sql, ()) == 1


def _scalar(conn: Connection, sql: str, params: tuple[Any, ...], *, rows: bool = True) -> Any:
    """The first column of the first row (rows=False: the statement returns none). On SQLite straight
    through the driver: SQLAlchemy's execution machinery costs ten times the in-process statement; errors
    are still raised as SQLAlchemy's."""
    if conn.dialect.name != "sqlite":
        result = conn.exec_driver_sql(sql, params)
        return result.scalar() if rows else None
    try:
        row = conn.connection.dbapi_connection.execute(sql, params).fetchone()  # type: ignore[union-attr]
    except sqlite3.Error as exc:
        raise DBAPIError.instance(sql, params, exc, sqlite3.Error) from exc
    return None if row is None else row[0]


_CHECK_SQLITE = "SELECT value FROM _dw_meta WHERE name = 'is_primary'"
_CHECK_PG = _CHECK_SQLITE + " FOR SHARE"
_OUTBOX_COLS = 6
# Rows per outbox INSERT: bound parameters stay under SQLite's limit.
_OUTBOX_CHUNK = 4000
_created_at: dict[str, Callable[[Any], Any] | None] = {}


def _created_at_processor(dialect: Dialect) -> Callable[[Any], Any] | None:
    if dialect.name not in _created_at:
        _created_at[dialect.name] = outbox.c.created_at.type.dialect_impl(dialect).bind_processor(dialect)
    return _created_at[dialect.name]


def write_outbox(conn: Connection, events: list[ChangeEvent]) -> None:
    """Give the events their seq (commit order: the last_seq row stays locked until commit) and store them.
    An event over events.MAX_EVENT_BYTES raises EventTooLargeError (the caller rolls the write back)."""
    if not events:
        return
    ph = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    top = _scalar(conn, _BUMP.replace("?", ph), (len(events),))
    now = utcnow()
    if conn.dialect.name == "sqlite":
        # what UTCDateTime's SQLite processor stores for an aware UTC datetime of this millennium, at a third
        # of its cost (its strftime); tests/stream/test_retention checks they agree
        stamp: Any = now.isoformat(timespec="microseconds")
    else:
        proc = _created_at_processor(conn.dialect)
        stamp = proc(now) if proc else now
    origin = "postgres" if conn.dialect.name == "postgresql" else conn.dialect.name
    params: list[Any] = []
    for i, ev in enumerate(events):
        ev.seq = top - len(events) + 1 + i
        ev.ts = now
        ev.origin = origin
        payload = ev.to_json()
        check_size(ev, payload)  # EventTooLargeError: the caller's transaction rolls back
        params += (ev.seq, ev.id, ev.table, ev.op, payload, stamp)
    row = "(" + ", ".join([ph] * _OUTBOX_COLS) + ")"
    step = _OUTBOX_CHUNK * _OUTBOX_COLS
    for i in range(0, len(params), step):
        part = params[i : i + step]
        sql = _INSERT + ", ".join([row] * (len(part) // _OUTBOX_COLS))
        _scalar(conn, sql, tuple(part), rows=False)


_BUMP = "UPDATE _dw_meta SET value = value + ? WHERE name = 'last_seq' RETURNING value"
_INSERT = "INSERT INTO _dw_outbox (seq, id, tbl, op, payload, created_at) VALUES "
