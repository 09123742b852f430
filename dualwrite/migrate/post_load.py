"""The schema objects created after the rows are in (so the copy is not slowed by them): indexes and unique
constraints, foreign keys (NOT VALID when SQLite left orphans), views, and identity sequences moved past
max(key) and past sqlite_sequence. Each is tried in its own savepoint, so one failure is reported, not fatal;
what already exists (a --resume) is reported as existing and skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, ForeignKeyConstraint, Index, func, inspect, select
from sqlalchemy.schema import AddConstraint

from dualwrite.backfill.copier import DB_ERRORS
from dualwrite.migrate.schema import Plan, connect_source


def _savepoint(conn: Connection, fn: Callable[[], None]) -> str | None:
    sp = conn.begin_nested()
    try:
        fn()
    except DB_ERRORS as exc:
        sp.rollback()
        orig = getattr(exc, "orig", exc)
        return (str(orig).strip().splitlines() or [type(orig).__name__])[0]
    sp.commit()
    return None


def indexes(conn: Connection, plan: Plan) -> list[dict[str, Any]]:
    out = []
    insp = inspect(conn)
    for p in plan.tables:
        have = {i["name"] for i in insp.get_indexes(p.name)}
        for ix in p.indexes:
            if ix.name in have:
                out.append({"name": ix.name, "table": p.name, "created": True, "existing": True})
                continue
            index = Index(ix.name, *[p.ddl.c[c] for c in ix.columns], unique=ix.unique)  # type: ignore[union-attr]
            err = _savepoint(conn, lambda index=index: index.create(conn))
            out.append({"name": ix.name, "table": p.name, "unique": ix.unique, "created": err is None, "error": err})
    return out


def foreign_keys(conn: Connection, plan: Plan) -> list[dict[str, Any]]:
    out = []
    insp = inspect(conn)
    ddl = {p.name: p.ddl for p in plan.tables}
    for p in plan.tables:
        have = {f["name"] for f in insp.get_foreign_keys(p.name)}
        for fk in p.fks:
            entry: dict[str, Any] = {"name": fk.name, "table": p.name, "parent": fk.parent}
            out.append(entry)
            if fk.name in have:
                entry.update(created=True, existing=True)
                continue
            parent = ddl[fk.parent]
            cons = ForeignKeyConstraint(
                [p.ddl.c[c] for c in fk.columns],  # type: ignore[union-attr]
                [parent.c[c] for c in fk.parent_columns],  # type: ignore[union-attr]
                name=fk.name,
                ondelete=fk.on_delete,
                onupdate=fk.on_update,
            )
            p.ddl.append_constraint(cons)  # type: ignore[union-attr]
            err = _savepoint(conn, lambda cons=cons: conn.execute(AddConstraint(cons)))
            if err and "violates foreign key" in err:
                # Orphans (SQLite does not enforce FKs by default): enforce for new rows, report the old.
                sql = str(AddConstraint(cons).compile(dialect=conn.dialect)) + " NOT VALID"
                err2 = _savepoint(conn, lambda sql=sql: conn.connection.driver_connection.cursor().execute(sql))
                entry.update(created=err2 is None, not_valid=err2 is None, error=err)
            else:
                entry.update(created=err is None, error=err)
    return out


def views(conn: Connection, plan: Plan) -> list[dict[str, Any]]:
    out = []
    have = set(inspect(conn).get_view_names())
    for name, sql in plan.views:
        if name in have:
            out.append({"name": name, "created": True, "existing": True})
            continue
        err = _savepoint(conn, lambda sql=sql: conn.connection.driver_connection.cursor().execute(sql))
        out.append({"name": name, "created": err is None, "error": err, "sql": sql})
    return out


def sequences(conn: Connection, plan: Plan, sqlite_path: str) -> list[dict[str, Any]]:
    floors: dict[str, int] = {}
    con = connect_source(sqlite_path)
    try:
        if con.execute("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence'").fetchone():
            floors = {n: int(s or 0) for n, s in con.execute("SELECT name, seq FROM sqlite_sequence")}
    finally:
        con.close()
    prep = conn.dialect.identifier_preparer
    out = []
    for p in plan.tables:
        for c in p.columns:
            if not c.identity:
                continue
            col = p.ddl.c[c.name]  # type: ignore[union-attr]
            floor = floors.get(p.source, 0) if p.autoincrement else 0
            top = func.greatest(func.coalesce(select(func.max(col)).scalar_subquery(), 0), floor)
            seq = func.pg_get_serial_sequence(prep.format_table(p.ddl), c.name)
            value = conn.execute(select(func.setval(seq, top + 1, False))).scalar()
            out.append({"table": p.name, "column": c.name, "next": value})
    return out
