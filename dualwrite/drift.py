"""Schema drift: the tables on a backend no longer match the models the adapter captures with.

Capture copies exactly the model's columns (`RETURNING` of the Table's columns), so a column added on
SQLite by an application migration that the model does not know is never carried to Postgres — a
silent loss. The supported path for a schema change during a migration (README, "Schema changes"):
add the column on Postgres first, then on SQLite, then deploy the model that has it (writers, relay and
replayers); events of the new shape that reach an old replayer are dead-lettered as schema errors and
re-driven once it is updated. Until the model has the column, `find_drift` reports it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import Engine, Table, inspect


@dataclass(frozen=True)
class Drift:
    backend: str
    table: str
    problem: str  # one line

    def __str__(self) -> str:
        return f"{self.backend}: table {self.table!r} {self.problem}"


def find_drift(engine: Engine, tables: Iterable[Table], *, backend: str, schema: str | None = None) -> list[Drift]:
    """Compare each model table with the live one: missing tables, and columns on one side only."""
    out: list[Drift] = []
    with engine.connect() as conn:
        insp = inspect(conn)
        existing = set(insp.get_table_names(schema=schema))
        for table in tables:
            if table.name not in existing:
                out.append(Drift(backend, table.name, "does not exist (run `dualwrite init`)"))
                continue
            live = {c["name"] for c in insp.get_columns(table.name, schema=schema)}
            model = {c.name for c in table.columns}
            unknown = sorted(live - model)
            missing = sorted(model - live)
            if unknown:
                out.append(
                    Drift(backend, table.name, f"has column(s) {', '.join(unknown)} the model lacks: not captured")
                )
            if missing:
                out.append(Drift(backend, table.name, f"lacks column(s) {', '.join(missing)} of the model"))
    return out
