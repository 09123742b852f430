"""The migration's own tables (dualwrite's bookkeeping and the copy's checkpoints), kept in the state schema
(Settings.state_schema, `_dualwrite` by default), never in the schema the tables are loaded into, and
dropped after a successful migration unless asked to keep them.

Only what this migration created is dropped: before creating anything, the first run (not a `--resume`)
notes in `_dw_meta` each table, and the state schema itself, that did not exist yet (`migrate <target
schema's hash> created:<name>`); a setup that was already there (a live dualwrite in the same state
schema) keeps its tables. An interrupted migration keeps everything: `--resume` continues from its
checkpoints. With --keep-state the notes go and the tables stay for good.
"""

from __future__ import annotations

import hashlib

from sqlalchemy import Connection, Engine, delete, select

from dualwrite.backfill import checkpoint as ckpt
from dualwrite.bookkeeping import RANGES, create_bookkeeping, internal_metadata, meta, state_schema_of

SCHEMA = "(schema)"
TABLES = [
    *(t.name for t in internal_metadata.sorted_tables),
    RANGES,  # Postgres only, made with the bookkeeping (apply/ranges.py)
    *(t.name for t in ckpt.checkpoint_metadata.sorted_tables),
]


def mark(target_schema: str) -> str:
    """The prefix of this migration's notes in `_dw_meta` (per target schema: migrations into other schemas
    sharing the state schema keep theirs apart)."""
    return f"migrate {hashlib.sha1(target_schema.encode()).hexdigest()[:10]} created:"


def create(pg: Engine, target_schema: str, *, resume: bool) -> None:
    """Create the bookkeeping and checkpoint tables in the state schema (idempotent); on a first run note
    which of them, and whether the schema, this migration creates."""
    with pg.begin() as conn:
        schema = str(state_schema_of(conn))
        schema_existed = _exists(conn, "to_regnamespace", _ident(schema))
        missing = [name for name in TABLES if not _exists(conn, "to_regclass", f"{_ident(schema)}.{_ident(name)}")]
        create_bookkeeping(conn, primary=False)
    ckpt.ensure(pg)
    if resume:
        return
    with pg.begin() as conn:
        for name in missing + ([] if schema_existed else [SCHEMA]):
            conn.execute(meta.insert().values(name=mark(target_schema) + name, value=1))


def resumable(pg: Engine, tables: list[str]) -> bool:
    """Whether the state schema holds checkpoints of any of `tables` (an interrupted migration's)."""
    with pg.connect() as conn:
        schema = str(state_schema_of(conn))
        found = _exists(conn, "to_regclass", f"{_ident(schema)}.{_ident(ckpt.checkpoints.name)}") and bool(
            conn.execute(select(ckpt.checkpoints.c.tbl).where(ckpt.checkpoints.c.tbl.in_(tables)).limit(1)).first()
        )
        conn.rollback()
    return found


def forget(pg: Engine, target_schema: str) -> None:
    """Keep everything (--keep-state): drop this migration's notes, so nothing is ever dropped for it later."""
    with pg.begin() as conn:
        conn.execute(delete(meta).where(meta.c.name.like(mark(target_schema) + "%")))


def drop_created(pg: Engine, target_schema: str) -> list[str]:
    """Drop the tables (and the schema) this migration created; return what was dropped."""
    prefix = mark(target_schema)
    with pg.begin() as conn:
        schema = str(state_schema_of(conn))
        marks = [str(n) for n in conn.execute(select(meta.c.name).where(meta.c.name.like(prefix + "%"))).scalars()]
        created = [m[len(prefix) :] for m in marks]
        dropped = []
        for name in [n for n in reversed(TABLES) if n in created and n != meta.name] + [meta.name]:
            if name == meta.name and name not in created:
                conn.execute(delete(meta).where(meta.c.name.in_(marks)))  # not ours: only our notes go
                continue
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {_ident(schema)}.{_ident(name)}")
            dropped.append(name)
        if SCHEMA in created:
            sql = "SELECT count(*) FROM pg_class WHERE relnamespace = to_regnamespace(%(s)s)"
            if not conn.exec_driver_sql(sql, {"s": _ident(schema)}).scalar():  # never CASCADE: the rest is not ours
                conn.exec_driver_sql(f"DROP SCHEMA {_ident(schema)}")
                dropped.append(f"schema {schema}")
    return dropped


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _exists(conn: Connection, fn: str, qualified: str) -> bool:
    """to_regclass / to_regnamespace of an exact (quoted) name, never through the search_path."""
    return bool(conn.exec_driver_sql(f"SELECT {fn}(%(n)s) IS NOT NULL", {"n": qualified}).scalar())
