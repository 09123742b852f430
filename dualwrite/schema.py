"""Creating the schema on both backends (idempotent): the store tables and dualwrite's bookkeeping."""

from __future__ import annotations

from sqlalchemy import Engine, MetaData, inspect

from dualwrite.bookkeeping import create_internal, internal_metadata


def create_schema(engine: Engine, metadata: MetaData, *, primary: bool) -> list[str]:
    """Create missing tables of `metadata` plus the internal ones; return the names created."""
    with engine.begin() as conn:
        existing = set(inspect(conn).get_table_names())
        metadata.create_all(conn, checkfirst=True)
        create_internal(conn, primary=primary)
    wanted = [t.name for t in metadata.sorted_tables] + [t.name for t in internal_metadata.sorted_tables]
    return [name for name in wanted if name not in existing]
