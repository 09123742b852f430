"""`dualwrite demo --multi-source DIR`: the example application as its customer runs it before dualwrite,
one SQLite file per store (memory, profiles, ingest: P0; graph, analytics, debate: P1; marketplace,
archive: P2), each seeded with history, and the project file (`DIR/dualwrite.toml`) that declares them
as sources. Every store's tables have their own names, so the sources share one Postgres schema.

    dualwrite demo --multi-source stores/
    cd stores && dualwrite init --create-tables && dualwrite migrate --priority P0 --dry-run

The project file's `models = "dualwrite.demo.multi:memory"` names the store's tables: this module answers
every store's name with a function returning them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dualwrite.demo.app import STORES
from dualwrite.demo.app import tables as app_tables
from dualwrite.demo.synth import seed, split_counts
from dualwrite.engines import sqlite_engine
from dualwrite.errors import ConfigError
from dualwrite.settings import Settings
from dualwrite.tables import Tables


def store_tables(store: str) -> Tables:
    return app_tables().select(stores=store)


def __getattr__(name: str) -> Any:
    """`dualwrite.demo.multi:STORE` (the project file's models): a function returning that store's tables."""
    if name in STORES:
        return lambda: store_tables(name)
    raise AttributeError(name)


def write_stores(folder: Path, settings: Settings, *, rows: int, schema: str = "dualwrite_demo") -> Path:
    """One seeded SQLite file per store in `folder` (which must not hold them yet) and the project file."""
    folder.mkdir(parents=True, exist_ok=True)
    taken = [p.name for p in [folder / "dualwrite.toml", *(folder / f"{s}.db" for s in STORES)] if p.exists()]
    if taken:
        raise ConfigError(f"--multi-source: {folder} already holds {', '.join(taken)}; give an empty folder")
    per_store = max(1, rows // len(STORES))
    lines = [
        "# The example application's stores, one SQLite file each (written by `dualwrite demo --multi-source`).",
        "[dualwrite]",
        f'pg_schema = "{schema}"  # the stores\' table names do not collide: one schema for all',
    ]
    for key, field in (("postgres", "postgres_url"), ("redis", "redis_url"), ("namespace", "namespace")):
        if field in settings.origins:  # only what was given: the defaults need no line
            lines.append(f'{key} = "{getattr(settings, field)}"')
    for store, priority in sorted(STORES.items(), key=lambda kv: kv[1]):
        tables = store_tables(store).tables()
        engine = sqlite_engine(f"sqlite:///{folder / f'{store}.db'}")
        try:
            tables[0].metadata.create_all(engine, tables=tables)
            seed(engine, tables, split_counts(tables, per_store))
        finally:
            engine.dispose()
        lines += ["", f"[sources.{store}]", f'sqlite = "{store}.db"', f'models = "dualwrite.demo.multi:{store}"']
        lines.append(f'priority = "P{priority}"')
    path = folder / "dualwrite.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
