"""Alembic during a live cutover: one revision applied to both backends, dualwrite's own tables left alone.

In the application's migrations/env.py (online mode):

    from alembic import context
    from dualwrite import load_settings
    from dualwrite.alembic import run_on_both
    from myapp.models import Base

    run_on_both(context, load_settings(), Base.metadata)      # Postgres first, then SQLite (batch mode)

Each backend keeps its own `alembic_version` (in the application's schema on Postgres), so a run that
stops between the two resumes where each one is. Autogenerate (`alembic revision --autogenerate`, `alembic
check`) compares your models with each backend and, through `include_object` / `include_name`, never
proposes to drop or change dualwrite's bookkeeping (`_dw_*` tables in the SQLite file, the state schema
on Postgres). SQLite runs in batch mode (a table is copied into a new one for what ALTER TABLE cannot do)
on a connection with foreign keys off, or dropping the old copy would cascade-delete its children's rows.

The order of a change while both backends are live (README, "Schema changes during a live cutover"):
expand before use (DDL on both, then the worker, then the application), contract after disuse (the
application, then the worker, then the DDL). New columns are nullable or have the same constant default on
both sides, since rows written by the old model get the database's default.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import MetaData

from dualwrite.settings import DEFAULT_STATE_SCHEMA, Settings

OWN_PREFIX = "_dw_"


def _table_of(obj: Any, type_: str) -> Any:
    return obj if type_ == "table" else getattr(obj, "table", None)


def filters(state_schema: str = DEFAULT_STATE_SCHEMA) -> dict[str, Callable[..., bool]]:
    """Alembic's include_name / include_object hooks that leave dualwrite's tables and state schema alone."""

    def include_name(name: str | None, type_: str, parent_names: dict[str, Any]) -> bool:
        if type_ == "schema":
            return name != state_schema
        if type_ == "table":
            return not (name or "").startswith(OWN_PREFIX) and parent_names.get("schema_name") != state_schema
        return True

    def include_object(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
        table = _table_of(obj, type_)
        if table is None:
            return True
        return not str(table.name).startswith(OWN_PREFIX) and getattr(table, "schema", None) != state_schema

    return {"include_name": include_name, "include_object": include_object}


_DEFAULT = filters()
include_name = _DEFAULT["include_name"]
include_object = _DEFAULT["include_object"]  # for env.py's context.configure(include_object=...)


def run_on_both(
    context: Any,
    settings: Settings,
    target_metadata: MetaData | None,
    *,
    order: Iterable[str] = ("postgres", "sqlite"),
    **configure: Any,
) -> None:
    """Run the pending revisions (or autogenerate) on each backend in `order`: Postgres in the application's
    schema, SQLite in batch mode with foreign keys off; `configure` goes to context.configure for both."""
    from dualwrite.engines import pg_engine, sqlite_engine

    if context.is_offline_mode():
        raise RuntimeError("dualwrite.alembic.run_on_both needs online mode (a connection to each backend)")
    hooks = filters(settings.state_schema)
    for backend in order:
        if backend == "postgres":
            engine = pg_engine(settings, pool_size=1, max_overflow=0)
            extra: dict[str, Any] = {
                "version_table_schema": None,  # the first of the search_path: the application's schema
                "render_as_batch": False,
                "transactional_ddl": None,  # the dialect's own (True on Postgres)
            }
        elif backend == "sqlite":
            engine = sqlite_engine(settings.sqlite_url, foreign_keys=False)
            # SQLite's DDL is transactional too: a revision applies whole or not at all
            extra = {"version_table_schema": None, "render_as_batch": True, "transactional_ddl": True}
        else:
            raise ValueError(f"unknown backend {backend!r} (postgres, sqlite)")
        try:
            with engine.connect() as connection:
                # every key set on each call: Alembic keeps the options of an earlier configure() otherwise
                context.configure(connection=connection, target_metadata=target_metadata, **hooks, **extra, **configure)
                with context.begin_transaction():
                    context.run_migrations()
                if connection.in_transaction():
                    connection.commit()
        finally:
            engine.dispose()
