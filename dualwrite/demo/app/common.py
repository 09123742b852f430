"""What every store shares beyond its schema (base.py): value checks and the tenant-bound repository base.

Values are checked before any SQL runs, against the column they go to, so both backends accept and
store exactly the same things (SQLite would take a too-long string, a NUL or a NaN that Postgres refuses
or stores differently, and the secondary apply would then fail on a row the primary accepted).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from sqlalchemy import JSON, Connection, Double, Executable, Integer, String, Table, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from dualwrite.demo.app.base import STAMPS, TENANT_MAX
from dualwrite.demo.app.errors import CrossTenantError, NotFoundError, StoreError, ValidationError, integrity_error
from dualwrite.types import ExactDecimal, UTCDateTime, utcnow

if TYPE_CHECKING:
    from dualwrite.adapter import DualWriter, WriteTx

Row = dict[str, Any]
Direction = Literal["out", "in", "both"]  # which way along links/edges a query follows
DIRECTIONS = ("out", "in", "both")
INT64 = 2**63 - 1


# -- value checks ----------------------------------------------------------------------------------
def check_text(value: Any, where: str, max_len: int | None = None, *, empty: bool = True) -> str:
    if not isinstance(value, str):
        raise ValidationError(f"{where}: expected text, got {type(value).__name__}")
    if not empty and not value.strip():
        raise ValidationError(f"{where}: must not be empty")
    if max_len is not None and len(value) > max_len:
        raise ValidationError(f"{where}: {len(value)} characters, at most {max_len} allowed")
    if "\x00" in value:
        raise ValidationError(f"{where}: contains a NUL character (Postgres text cannot hold it)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError(f"{where}: contains a lone surrogate (not valid UTF-8)") from None
    return value


def check_json(value: Any, where: str, depth: int = 0) -> Any:
    """A JSON value both JSON (SQLite) and JSONB (Postgres) store and return identically."""
    if depth > 100:
        raise ValidationError(f"{where}: nested too deeply")
    if value is None or isinstance(value, bool | int | str):
        if isinstance(value, str):
            check_text(value, where)
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValidationError(f"{where}: {value!r} is not valid JSON")
        return value
    if isinstance(value, list | tuple):
        return [check_json(v, where, depth + 1) for v in value]
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValidationError(f"{where}: object key {k!r} is not text")
            out[check_text(k, where)] = check_json(v, where, depth + 1)
        return out
    raise ValidationError(f"{where}: a {type(value).__name__} is not a JSON value")


def check_id(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= INT64:
        raise ValidationError(f"{where}: {value!r} is not a row id")
    return value


def check_limit(value: Any, most: int = 10_000) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= most:
        raise ValidationError(f"limit: {value!r} is not in 1..{most}")
    return value


def check_tenant(value: Any) -> str:
    return check_text(value, "tenant_id", TENANT_MAX, empty=False)


def check_aware(value: Any, where: str) -> datetime:
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise ValidationError(f"{where}: needs a timezone-aware datetime, got {value!r}")
    return value


def check_choice(value: Any, where: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValidationError(f"{where}: {value!r} is not one of {', '.join(choices)}")
    return str(value)


def check_row(table: Table, values: Mapping[str, Any]) -> dict[str, Any]:
    """Check every value against its column's type; returns the values (JSON normalised to lists/dicts)."""
    out: dict[str, Any] = {}
    for name, value in values.items():
        col = table.c[name]
        where = f"{table.name}.{name}"
        if value is None:
            if not col.nullable:
                raise ValidationError(f"{where}: must not be null")
        elif isinstance(col.type, JSON):
            value = check_json(value, where)
        elif isinstance(col.type, String):
            value = check_text(value, where, col.type.length)
        elif isinstance(col.type, UTCDateTime):
            check_aware(value, where)
        elif isinstance(col.type, ExactDecimal):
            try:
                value = col.type.coerce(value)
            except ValueError as exc:
                raise ValidationError(f"{where}: {exc}") from None
        elif isinstance(col.type, Double):
            if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
                raise ValidationError(f"{where}: expected a number, got {type(value).__name__}")
            if not math.isfinite(value):
                raise ValidationError(f"{where}: {value!r} is not finite (SQLite would store NULL)")
            value = float(value)
        elif isinstance(col.type, Integer):
            if isinstance(value, bool) or not isinstance(value, int) or abs(value) > INT64:
                raise ValidationError(f"{where}: {value!r} is not a 64-bit integer")
        out[name] = value
    return out


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()  # "leave unchanged" for optional update arguments (None means set to null)


def given(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not UNSET}


# -- the repository base ---------------------------------------------------------------------------
class TenantStore:
    """A store bound to one tenant: every statement it runs is scoped to `tenant_id`."""

    store: ClassVar[str]

    def __init__(self, dw: DualWriter, tenant_id: str, *, clock: Callable[[], datetime] = utcnow) -> None:
        self.dw = dw
        self.tenant_id = check_tenant(tenant_id)
        self.clock = clock

    def __repr__(self) -> str:
        return f"{type(self).__name__}(tenant_id={self.tenant_id!r})"

    def now(self) -> datetime:
        return self.clock()

    @contextmanager
    def write(self) -> Iterator[WriteTx]:
        """One transaction on the primary; integrity errors come out as store errors (all rolled back)."""
        try:
            with self.dw.begin() as tx:
                yield tx
        except IntegrityError as exc:
            raise integrity_error(exc) from exc

    # statements, always scoped to the tenant
    def mine(self, table: Table) -> Any:
        return table.c.tenant_id == self.tenant_id

    def stamped(self, table: Table, values: Mapping[str, Any], stamps: tuple[str, ...] = STAMPS) -> dict[str, Any]:
        """`values` with the table's `stamps` columns the caller left out set to one reading of the clock."""
        missing = [s for s in stamps if s in table.c and s not in values]
        now = self.now() if missing else None
        return {**values, **dict.fromkeys(missing, now)}

    def insert(self, tx: WriteTx, table: Table, values: Mapping[str, Any]) -> Row:
        values = check_row(table, {**self.stamped(table, values), "tenant_id": self.tenant_id})
        return dict(tx.execute(insert(table).values(values))[0])

    def upsert(
        self, tx: WriteTx, table: Table, values: Mapping[str, Any], conflict: list[str], keep: tuple[str, ...]
    ) -> Row:
        """Insert, or on conflict update every column but the key, conflict columns and `keep`."""
        values = check_row(table, {**self.stamped(table, values), "tenant_id": self.tenant_id})
        pk = {c.name for c in table.primary_key.columns}
        cols = [c for c in values if c not in pk and c not in conflict and c not in keep]
        return dict(tx.upsert(table, values, ["tenant_id", *conflict], cols)[0])

    def update_by_id(self, tx: WriteTx, table: Table, row_id: int, values: Mapping[str, Any]) -> Row | None:
        values = check_row(table, self.stamped(table, values, ("updated_at",)))
        stmt = update(table).where(table.c.id == row_id, self.mine(table)).values(values)
        rows = tx.execute(stmt)
        return dict(rows[0]) if rows else None

    def delete_where(self, tx: WriteTx, table: Table, *where: Any) -> list[Row]:
        return [dict(r) for r in tx.execute(delete(table).where(self.mine(table), *where))]

    def owned(self, tx: WriteTx, table: Table, row_id: Any, where: str, *, lock: bool = False) -> Row:
        """The tenant's row `row_id` read on the primary, or NotFoundError / CrossTenantError."""
        row_id = check_id(row_id, where)
        stmt = select(table).where(table.c.id == row_id)
        if lock:
            stmt = stmt.with_for_update()  # Postgres: held to commit; SQLite: BEGIN IMMEDIATE already is
        row = tx.connection.execute(stmt).mappings().first()
        if row is None:
            raise NotFoundError(f"{where}: {table.name} id {row_id} does not exist")
        if row["tenant_id"] != self.tenant_id:
            raise CrossTenantError(f"{where}: {table.name} id {row_id} belongs to another tenant")
        return dict(row)

    # reads: routed by the phase (maybe shadow-compared), so they return plain data only
    def rows(self, query: str, stmt: Executable, *, ordered: bool = True, **params: Any) -> list[Row]:
        def fn(conn: Connection) -> list[Row]:
            return [dict(r) for r in conn.execute(stmt).mappings()]

        return self.dw.read(
            store=self.store, query=query, fn=fn, params={"tenant_id": self.tenant_id, **params}, ordered=ordered
        )

    def first(self, query: str, stmt: Executable, **params: Any) -> Row | None:
        found = self.rows(query, stmt, **params)
        return found[0] if found else None

    def get_row(self, query: str, table: Table, row_id: Any) -> Row | None:
        """The tenant's row by id, or None (also for another tenant's id)."""
        row_id = check_id(row_id, f"{table.name}.id")
        return self.first(query, select(table).where(table.c.id == row_id, self.mine(table)), id=row_id)


def not_found(table: Table, row_id: int) -> StoreError:
    return NotFoundError(f"{table.name}: id {row_id} does not exist for this tenant")


def prefix_range(column: Any, prefix: str) -> list[Any]:
    """Conditions for `column` starting with `prefix` (code-point order: see OrderedString)."""
    if not prefix:
        return []
    conds = [column >= prefix]
    stem = prefix
    while stem and ord(stem[-1]) == 0x10FFFF:
        stem = stem[:-1]
    if stem:
        nxt = ord(stem[-1]) + 1
        if 0xD800 <= nxt <= 0xDFFF:  # surrogates cannot be stored; the next storable code point
            nxt = 0xE000
        conds.append(column < stem[:-1] + chr(nxt))
    return conds
