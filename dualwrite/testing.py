"""Helpers for tests (yours and ours) and benchmarks that need a ready DualWriter on real servers."""

from __future__ import annotations

from typing import Any

from dualwrite.adapter import DualWriter
from dualwrite.bookkeeping import create_schema
from dualwrite.fence import live_members
from dualwrite.retry import poll_until
from dualwrite.settings import Settings
from dualwrite.switch import switch_primary
from dualwrite.tables import Tables


def prepared_writer(
    settings: Settings, tables: Tables | Any, *, phase: str = "sqlite", relay: bool = False
) -> DualWriter:
    """Create `tables` and the bookkeeping on both backends (SQLite primary), set the phase (forced) and
    return a writer. With phase postgres_primary/postgres, Postgres is made the primary."""
    dw = DualWriter(settings, tables, relay=False)
    create_schema(dw.backends.sqlite, dw.tables.tables(), primary=True)
    create_schema(dw.backends.postgres, dw.tables.tables(), primary=False)
    dw.phases.set(phase, force=True, reason="test setup")
    if dw.phases.current().primary == "postgres":
        switch_primary(dw.backends, dw.tables, "postgres")
    if relay:
        dw.start_relay()
    return dw


def registered(dw: DualWriter, timeout: float = 10.0) -> DualWriter:
    """Wait until the writer's fence member heartbeats (its thread registers just after the constructor
    returns): from then on the gate counts it as a live application instance (writers_live)."""
    fence = dw.fence
    if fence is None:
        return dw
    if not poll_until(timeout, 0.01, lambda: fence.id in live_members(dw.backends.redis, dw.settings.namespace)):
        raise TimeoutError(f"writer {fence.id} not registered in the write fence after {timeout:g}s")
    return dw


def single_backend(settings: Settings, tables: Tables | Any, backend: str, **kw: Any) -> DualWriter:
    """A writer whose phase uses one backend alone: `sqlite` or `postgres`."""
    return prepared_writer(settings, tables, phase="sqlite" if backend == "sqlite" else "postgres", **kw)
