"""`dualwrite migrate --undo`: drop what a migration of one SQLite file created in its target schema, and
nothing else.

What migrate creates is marked on the object itself, as a Postgres comment (`dualwrite migrate: from
FILE`): each table and view it created and the target schema when it created it. The mark survives the
migration's own state (dropped after a verified run, see state.py) and travels with a dump. `undo`
drops the views, then the tables (one DROP, never CASCADE: anything else depending on them makes it
refuse, naming it), then the schema if migrate created it and it is now empty; then the migration's
leftover state (an unverified or kept run's bookkeeping, only what it created). A table that was there
before is never marked: migrate refuses to load into an existing table.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Connection, Engine

from dualwrite.errors import ConfigError, first_line

PREFIX = "dualwrite migrate: from "


def marker(sqlite_path: str) -> str:
    return PREFIX + str(Path(sqlite_path).resolve())


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def schema_exists(conn: Connection, schema: str) -> bool:
    return bool(conn.exec_driver_sql("SELECT to_regnamespace(%(s)s) IS NOT NULL", {"s": _ident(schema)}).scalar())


def mark_schema(conn: Connection, schema: str, sqlite_path: str) -> None:
    conn.exec_driver_sql(f"COMMENT ON SCHEMA {_ident(schema)} IS {_literal(marker(sqlite_path))}")


def mark(conn: Connection, schema: str, names: list[str], sqlite_path: str, kind: str = "TABLE") -> None:
    """Mark tables (or views) migrate just created in `schema` as made from `sqlite_path`."""
    for name in names:
        conn.exec_driver_sql(f"COMMENT ON {kind} {_ident(schema)}.{_ident(name)} IS {_literal(marker(sqlite_path))}")


def created(conn: Connection, schema: str, sqlite_path: str) -> dict[str, list[str]]:
    """What a migration of `sqlite_path` created in `schema`: {"tables": [...], "views": [...], "schema": [..]}."""
    sql = (
        "SELECT c.relname, c.relkind FROM pg_class c WHERE c.relnamespace = to_regnamespace(%(s)s) "
        "AND c.relkind IN ('r', 'v', 'p') AND obj_description(c.oid, 'pg_class') = %(m)s ORDER BY c.relname"
    )
    out: dict[str, list[str]] = {"tables": [], "views": [], "schema": []}
    if not schema_exists(conn, schema):
        return out
    for name, kind in conn.exec_driver_sql(sql, {"s": _ident(schema), "m": marker(sqlite_path)}):
        out["views" if kind == "v" else "tables"].append(str(name))
    sql = "SELECT obj_description(to_regnamespace(%(s)s), 'pg_namespace')"
    if conn.exec_driver_sql(sql, {"s": _ident(schema)}).scalar() == marker(sqlite_path):
        out["schema"].append(schema)
    return out


def undo(pg: Engine, schema: str, sqlite_path: str) -> dict[str, list[str]]:
    """Drop what a migration of `sqlite_path` created in `schema` (see the module docstring); return it."""
    from sqlalchemy.exc import DBAPIError

    from dualwrite.migrate import state as migration_state

    with pg.begin() as conn:
        found = created(conn, schema, sqlite_path)
        q = _ident(schema)
        try:
            if found["views"]:
                conn.exec_driver_sql("DROP VIEW " + ", ".join(f"{q}.{_ident(v)}" for v in found["views"]))
            if found["tables"]:
                conn.exec_driver_sql("DROP TABLE " + ", ".join(f"{q}.{_ident(t)}" for t in found["tables"]))
        except DBAPIError as exc:  # something not ours depends on them: refuse, leave everything
            raise ConfigError(f"migrate --undo: schema {schema}: {first_line(exc)}; nothing was dropped") from None
        left = conn.exec_driver_sql(
            "SELECT count(*) FROM pg_class WHERE relnamespace = to_regnamespace(%(s)s)", {"s": q}
        )
        if found["schema"] and not left.scalar():
            conn.exec_driver_sql(f"DROP SCHEMA {q}")
        elif found["schema"]:
            found["schema"] = []  # it holds something else now: it stays
    with pg.connect() as conn:  # the state schema: the search path's other schema, if it exists
        others = [s for s in conn.exec_driver_sql("SELECT current_schemas(false)").scalar() or [] if s != schema]
        sql = "SELECT to_regclass(%(t)s) IS NOT NULL"
        has_meta = bool(others) and conn.exec_driver_sql(sql, {"t": f"{_ident(others[0])}._dw_meta"}).scalar()
        conn.rollback()
    if has_meta:  # an unverified or kept migration's own tables (only what it created: state.py)
        dropped = migration_state.drop_created(pg, schema)
        if dropped:
            found["state"] = dropped
    return found
