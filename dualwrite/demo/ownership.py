"""The demo works only in places it created and marked as its own; it refuses anything else (ConfigError:
one line, exit 2) before writing a byte.

- Postgres schema (the application's and the state schema): absent -> created with `COMMENT ON SCHEMA ...
  IS 'dualwrite-demo'`; present, empty and without a comment -> marked so. Present with that comment ->
  ours, if it holds nothing but the demo's tables and dualwrite's `_dw_*` ones; then it is dropped and
  created again. Anything else (the user's `public`, a schema of the same name holding anything, a table
  someone added to ours) is refused, and nothing is dropped.
- SQLite file: absent -> ours (the demo creates it and a `_dw_demo_owner` table in it); present -> ours only
  with that table and nothing but the demo's tables; then those tables are emptied of the demo's rows by
  dropping them. A file of the user's is refused.
- Redis namespace: ours if `<ns>:demo:owner` is set, or the namespace holds no key at all (then it is set);
  otherwise refused (it may be a live cutover's phase and stream).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from sqlalchemy import create_engine, text

from dualwrite.engines import open_redis
from dualwrite.errors import ConfigError
from dualwrite.settings import Settings

MARK = "dualwrite-demo"
SQLITE_MARK_TABLE = "_dw_demo_owner"

# Objects of a schema, other than tables' own indexes, sequences, row types and constraints.
_OBJECTS = text(
    """
    SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE n.nspname = :s AND (c.relkind IN ('r', 'p', 'v', 'm', 'f')
       OR (c.relkind = 'S' AND NOT EXISTS (
             SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype IN ('a', 'i'))))
    UNION ALL
    SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = :s
    UNION ALL
    SELECT t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
     WHERE n.nspname = :s AND t.typtype IN ('e', 'd', 'r', 'm')
       OR (n.nspname = :s AND t.typtype = 'c' AND NOT EXISTS (
             SELECT 1 FROM pg_class c WHERE c.oid = t.typrelid AND c.relkind <> 'c'))
    """
)


def _foreign(names: Iterable[str], own: set[str]) -> list[str]:
    return sorted(n for n in names if n not in own and not n.startswith("_dw_"))


def _listing(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def claim(settings: Settings, own_tables: set[str]) -> None:
    """Check the namespace, both schemas and the file first (refusing touches nothing), then take them."""
    for act in (False, True):
        claim_redis(settings, act=act)
        claim_postgres(settings, own_tables, act=act)
        claim_sqlite(settings.sqlite_path, own_tables, act=act)


def claim_postgres(settings: Settings, own_tables: set[str], *, act: bool = True) -> None:
    """Make the application's and the state schema the demo's, empty (see the module docstring)."""
    admin = create_engine(settings.postgres_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            schemas = list(dict.fromkeys([settings.pg_schema, settings.state_schema]))
            state: dict[str, str] = {}
            for schema in schemas:  # refuse before touching either
                found = conn.execute(text("SELECT oid FROM pg_namespace WHERE nspname = :s"), {"s": schema}).first()
                if found is None:
                    state[schema] = "create"
                    continue
                mark = conn.execute(text("SELECT obj_description(:o, 'pg_namespace')"), {"o": found[0]}).scalar()
                objects = list(conn.execute(_OBJECTS, {"s": schema}).scalars())
                if mark is None and not objects:
                    state[schema] = "mark"  # empty and nobody described it: nothing of anyone's to lose
                    continue
                if mark != MARK:
                    what = f"holds {_listing(sorted(objects))}" if objects else "was not created by the demo"
                    raise ConfigError(
                        f"demo: Postgres schema {schema!r} exists and is not the demo's ({what}); the demo works "
                        "only in a schema it creates: give another --pg-schema, or unset DUALWRITE_PG_SCHEMA"
                    )
                foreign = _foreign(objects, own_tables)
                if foreign:
                    raise ConfigError(
                        f"demo: Postgres schema {schema!r} is the demo's but also holds {_listing(foreign)}, "
                        "which the demo did not create; move them, or give another --pg-schema"
                    )
                state[schema] = "recreate"
            for schema in schemas if act else ():
                q = conn.dialect.identifier_preparer.quote(schema)
                if state[schema] == "recreate":
                    conn.execute(text(f"DROP SCHEMA {q} CASCADE"))  # only the demo's objects, checked above
                if state[schema] != "mark":
                    conn.execute(text(f"CREATE SCHEMA {q}"))
                conn.execute(text(f"COMMENT ON SCHEMA {q} IS '{MARK}'"))
    finally:
        admin.dispose()


def claim_sqlite(path: Path, own_tables: set[str], *, act: bool = True) -> None:
    """Make the SQLite file the demo's, without the demo's tables of an earlier run."""
    import sqlite3

    if not path.exists():
        if not act:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(path) as db:
            db.execute(f"CREATE TABLE {SQLITE_MARK_TABLE} (mark TEXT)")
            db.execute(f"INSERT INTO {SQLITE_MARK_TABLE} VALUES (?)", (MARK,))
        return
    try:
        db = sqlite3.connect(path.resolve().as_uri() + "?mode=rw", uri=True)
        names = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")]
    except sqlite3.DatabaseError as exc:
        raise ConfigError(f"demo: --sqlite {str(path)!r} cannot be read as SQLite ({exc})") from None
    try:
        if SQLITE_MARK_TABLE not in names:
            raise ConfigError(
                f"demo: SQLite file {str(path)!r} exists and is not the demo's"
                + (f" (holds {_listing(sorted(names))})" if names else "")
                + "; the demo creates its own file: give a path that does not exist, or none"
            )
        foreign = _foreign((n for n in names if not n.startswith("sqlite_")), own_tables)
        if foreign:
            raise ConfigError(
                f"demo: SQLite file {str(path)!r} is the demo's but also holds {_listing(foreign)}; "
                "give a path that does not exist"
            )
        if not act:
            return
        db.execute("PRAGMA foreign_keys = OFF")
        for name in names:
            if name != SQLITE_MARK_TABLE and not name.startswith("sqlite_"):
                db.execute(f'DROP TABLE IF EXISTS "{name}"')
        db.commit()
    finally:
        db.close()


def claim_redis(settings: Settings, *, act: bool = True) -> None:
    """Make the Redis namespace the demo's: marked, or holding nothing yet."""
    client = open_redis(settings.redis_url, timeout=5)
    owner = settings.key("demo", "owner")
    try:
        if client.get(owner) is not None:  # an earlier demo run's: start from nothing (a stale stream would
            if not act:
                return
            stale = [k for k in client.scan_iter(match=f"{settings.namespace}:*", count=1000) if k != owner.encode()]
            if stale:  # look like events already published)
                client.delete(*stale)
            return
        for key in client.scan_iter(match=f"{settings.namespace}:*", count=1000):
            raise ConfigError(
                f"demo: Redis namespace {settings.namespace!r} is in use (e.g. key {key.decode(errors='replace')!r})"
                " and is not the demo's: give another --namespace, or unset DUALWRITE_NAMESPACE"
            )
        if act:
            client.set(owner, MARK)
    finally:
        client.close()
