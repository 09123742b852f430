"""`dualwrite status` of a project file's sources: one row per source (its phase, the gate for its next
phase, how fresh its last verify is, the shadow counts), at a glance."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from dualwrite.settings import Settings


def source_rows(sources: list[Settings], config: Any) -> list[dict[str, Any]]:
    """Each source's phase, gate and verification, read from its own setup (an unreachable one says so)."""
    from dualwrite.cli.options import load_tables, open_backends, sqlite_file
    from dualwrite.cutover.gate import check
    from dualwrite.errors import first_line
    from dualwrite.redis_keys import read_shadow_counts
    from dualwrite.tables import Tables
    from dualwrite.verify.last import load_last, verify_verdict

    rows = []
    for s in sources:
        row: dict[str, Any] = {"source": s.source, "priority": f"P{s.priority}", "sqlite": str(s.sqlite_path)}
        row.update(pg_schema=s.pg_schema, namespace=s.namespace)
        try:
            sqlite_file(s)  # a missing or foreign file is this source's row, not the whole command's failure
            tables = load_tables(s, required=False)
            backends = open_backends(s)
            try:
                gate = check(backends, tables if tables is not None else Tables([]), None, config)
                last = load_last(backends.redis, s.namespace)
                counts = read_shadow_counts(backends.redis, s.namespace)
            finally:
                backends.close()
        except Exception as exc:  # noqa: BLE001 - one source's trouble is its row, not the command's
            row.update(phase="unknown", gate=f"unavailable: {first_line(exc)}", ok=False)
            rows.append(row)
            continue
        row.update(phase=gate.current, next=gate.target, ok=gate.ok)
        row["gate"] = "PASS" if gate.ok else "FAIL: " + ", ".join(c.name for c in gate.failing)
        if gate.target == gate.current:
            row["gate"] = "final phase" if gate.ok else row["gate"]
        if last is None:
            row["verify"] = "never"
        else:  # judged as the gate judges it: the source's tables, the oldest of their results
            at, bad, never = verify_verdict(last, tables.names() if tables is not None else [])
            age = (datetime.now(UTC) - datetime.fromisoformat(at)).total_seconds()
            state = "differences" if bad else f"never verified: {', '.join(never)}" if never else "clean"
            stale = config.verify_max_age_seconds is not None and age > config.verify_max_age_seconds
            row["verify"] = f"{state}, {age:.0f}s ago" + (" (stale)" if stale else "")
        row["shadow"] = ", ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "-"
        rows.append(row)
    return rows


COLUMNS = ("source", "priority", "phase", "next", "gate", "verify", "shadow", "pg_schema")


def print_sources(rows: list[dict[str, Any]]) -> None:
    """One row per source: rich on a terminal, aligned plain lines otherwise (cli.render.table)."""
    from dualwrite.cli import render

    cells = [[r.get(k, "-") for k in COLUMNS] for r in rows]
    render.table(COLUMNS, cells, title=f"{len(rows)} source(s), in priority order", left=len(COLUMNS))
