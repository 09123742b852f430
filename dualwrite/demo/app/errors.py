"""The errors a store call raises, each with a one-line message naming the table and field.

Database integrity errors are translated by `integrity_error` (both dialects); a translated error means
the whole store call rolled back: nothing of it was written.
"""

from __future__ import annotations

import re
from functools import cache

from sqlalchemy import CheckConstraint, ForeignKeyConstraint, UniqueConstraint
from sqlalchemy.exc import IntegrityError

from dualwrite.errors import DualwriteError


class StoreError(DualwriteError):
    """Base of every store error."""


class ValidationError(StoreError, ValueError):
    """A value is malformed, too long, or one a backend would refuse (or store differently)."""


class NotFoundError(StoreError, LookupError):
    """The row named does not exist for this tenant."""


class CrossTenantError(StoreError):
    """The row named belongs to another tenant: a store never reads or changes it."""


class DuplicateError(StoreError):
    """A unique constraint (always including the tenant) would be violated."""


class StateError(StoreError):
    """The row exists but its state refuses the change (a closed listing, a finished job, ...)."""


class ReferenceViolation(StoreError):
    """A foreign key was violated: a referenced row is missing, or a referenced row was deleted."""


@cache
def _constraints() -> dict[str, tuple[str, tuple[str, ...], str]]:
    """Constraint name -> (table, columns, kind) for every store table (names come from NAMING)."""
    from dualwrite.demo.app import tables  # imports every store module: the map is complete

    found: dict[str, tuple[str, tuple[str, ...], str]] = {}
    for table in tables().tables():
        for con in table.constraints:
            kind = {UniqueConstraint: "unique", ForeignKeyConstraint: "fk", CheckConstraint: "check"}.get(type(con))
            if kind and isinstance(con.name, str):
                found[con.name] = (table.name, tuple(c.name for c in con.columns), kind)
        for index in table.indexes:
            if index.unique and isinstance(index.name, str):
                found[index.name] = (table.name, tuple(c.name for c in index.columns), "unique")
    return found


_SQLITE_COLS = re.compile(r"constraint failed: (?P<cols>[\w.]+(?:, [\w.]+)*)$")
_STATEMENT_TABLE = re.compile(r'^\s*(?:INSERT INTO|UPDATE|DELETE FROM)\s+"?(\w+)', re.IGNORECASE)


def _fields(cols: tuple[str, ...]) -> str:
    return ", ".join(c for c in cols if c != "tenant_id") or "tenant_id"


def integrity_error(exc: IntegrityError) -> StoreError:
    """Translate a database integrity error (SQLite or Postgres) into a one-line store error."""
    orig = exc.orig
    code = getattr(orig, "pgcode", None) or getattr(orig, "sqlstate", None)
    message = str(orig).strip().splitlines()[0] if orig is not None else str(exc)
    match = _STATEMENT_TABLE.match(exc.statement or "")
    table = match.group(1) if match else "?"
    cols: tuple[str, ...] = ()
    diag = getattr(orig, "diag", None)
    name = getattr(diag, "constraint_name", None) if diag is not None else None
    if code is None:  # SQLite: "UNIQUE constraint failed: t.a, t.b" / "CHECK constraint failed: ck_name"
        tail = _SQLITE_COLS.search(message)
        parts = tail.group("cols").split(", ") if tail else []
        if parts and parts[0] in _constraints():
            name = parts[0]
        elif parts:
            table, cols = parts[0].split(".")[0], tuple(p.split(".")[-1] for p in parts)
    if name and name in _constraints():
        table, cols, _ = _constraints()[name]
    elif diag is not None and getattr(diag, "column_name", None):
        table, cols = diag.table_name or table, (diag.column_name,)
    if code == "23505" or message.startswith("UNIQUE constraint failed"):
        return DuplicateError(f"{table}: a row with this {_fields(cols)} already exists for the tenant")
    if code == "23503" or message.startswith("FOREIGN KEY constraint failed"):
        where = f" ({_fields(cols)})" if cols else ""
        return ReferenceViolation(
            f"{table}: foreign key violated{where}: a referenced row is missing or still referenced"
        )
    if code == "23514" or message.startswith("CHECK constraint failed"):
        return ValidationError(f"{table}: check {name or _fields(cols)} failed")
    if code == "23502" or message.startswith("NOT NULL constraint failed"):
        return ValidationError(f"{table}: {_fields(cols) if cols else 'a field'} must not be null")
    return StoreError(f"{table}: integrity error: {message}")
