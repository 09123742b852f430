"""Helpers for tests and benchmarks that need a ready DualWriter on real servers."""

from __future__ import annotations

from sqlalchemy import MetaData

from dualwrite.adapter import DualWriter, TableCatalog
from dualwrite.schema import create_schema
from dualwrite.settings import Settings


def prepared_writer(
    settings: Settings,
    *,
    metadata: MetaData | None = None,
    catalog: TableCatalog | None = None,
    phase: str = "sqlite",
    relay: bool = False,
) -> DualWriter:
    """Create the schema on both backends (SQLite primary), set the phase (forced) and return a writer.
    With phase postgres_primary/postgres, Postgres is made the primary."""
    if metadata is None:
        from dualwrite.registry import default_registry

        metadata = default_registry().metadata
    dw = DualWriter(settings, catalog=catalog, relay=False)
    create_schema(dw.sqlite, metadata, primary=True)
    create_schema(dw.postgres, metadata, primary=False)
    dw.phases.set(phase, force=True, reason="test setup")
    if dw.phases.current().primary == "postgres":
        from dualwrite.switch import switch_primary

        switch_primary(dw, "postgres")
    if relay:
        dw.start_relay()
    return dw


def single_backend(settings: Settings, backend: str, **kw: object) -> DualWriter:
    """A writer whose phase uses one backend alone: `sqlite` or `postgres`."""
    return prepared_writer(settings, phase="sqlite" if backend == "sqlite" else "postgres", **kw)  # type: ignore[arg-type]
