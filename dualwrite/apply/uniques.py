"""Unique constraints (other than the primary key) when events are applied out of the primary's order.

The primary checked every unique constraint row by row (SQLite's are always immediate; so are Postgres'
unless declared DEFERRABLE), so its states in seq order never violate one. A batch applied as one
statement per table (the newest image per key, see rule.py) can: two rows that exchange a value inside
one transaction (via a temporary value) reach the target as their final images only, and the first row
written collides with the second's old value. rule.py then applies the batch again event by event in seq
order, which replays the primary's own valid sequence of states.

An image can still collide with a row the target holds at a NEWER version: the primary committed that
row with the value at its version w, so at w the key of our image (version v < w) no longer held it (the
constraint was checked), hence a later event of our key, in (v, w], supersedes our image (or our key was
deleted before a backfill chunk that copied the other row, and its delete event is still in flight).
Such an image is stale: it is skipped, never written, never a dead letter. `superseded` decides it from
the violated constraint's columns (named by the error) and the colliders' versions; anything it cannot
tell (an expression or partial index, a key whose text it cannot rebuild) is not called stale.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

from dualwrite.apply.statements import TableSQL
from dualwrite.errors import sqlstate
from dualwrite.events import key_text

Exec = Callable[..., list[Any]]  # (sql, params) -> rows
_SQLITE_UNIQUE = 2067  # SQLITE_CONSTRAINT_UNIQUE
_PG_INDEX_COLUMNS = (
    "SELECT a.attname FROM pg_index ix JOIN pg_class ic ON ic.oid = ix.indexrelid "
    "JOIN pg_attribute a ON a.attrelid = ix.indrelid AND a.attnum = ANY(ix.indkey) "
    "WHERE ix.indrelid = to_regclass(%s) AND ic.relname = %s AND ix.indexprs IS NULL AND ix.indpred IS NULL"
)


def is_unique_violation(exc: BaseException) -> bool:
    """A unique constraint (not ON CONFLICT's primary key, which the apply handles) refused a row."""
    if sqlstate(exc) == "23505":
        return True
    orig = getattr(exc, "orig", exc)
    return isinstance(orig, sqlite3.IntegrityError) and (
        getattr(orig, "sqlite_errorcode", None) == _SQLITE_UNIQUE or "UNIQUE constraint failed" in str(orig)
    )


def violated_columns(ex: Exec, exc: BaseException, sql: TableSQL) -> tuple[str, ...] | None:
    """The columns of the plain unique constraint the error names, or None if it cannot be told."""
    orig = getattr(exc, "orig", exc)
    if sql.postgres:
        name = getattr(getattr(orig, "diag", None), "constraint_name", None)
        if not name:
            return None
        cols = tuple(str(r[0]) for r in ex(_PG_INDEX_COLUMNS, (sql.regclass, name)))
    else:  # "UNIQUE constraint failed: t.a, t.b" (an index on expressions: "... failed: index 'ix'")
        text = str(orig)
        head = "UNIQUE constraint failed: "
        if head not in text or "index '" in text:
            return None
        cols = tuple(part.strip().rsplit(".", 1)[-1] for part in text.split(head, 1)[1].split(","))
    return cols if cols and all(c in sql.colset for c in cols) else None


def superseded(ex: Exec, exc: BaseException, sql: TableSQL, values: Sequence[Any], seq: int) -> bool:
    """Whether the image (bound `values`, version `seq`) that raised `exc` collides only with rows the
    target holds at newer versions (so it is stale, see above). Runs inside the apply's transaction."""
    cols = violated_columns(ex, exc, sql)
    if cols is None:
        return False
    found = [sql.cols.index(c) for c in cols]
    if any(values[i] is None for i in found):
        return False  # NULLs never collide: the error was about something else
    params = [values[i] for i in found] + [values[i] for i in sql.pk_pos]
    colliders = ex(sql.collider_sql(cols), tuple(params))
    if not colliders:
        return False
    for row in colliders:
        version = ex(sql.version_sql, (sql.name, key_text(list(row))))
        if not version or int(version[0][0]) <= seq:
            return False
    return True
