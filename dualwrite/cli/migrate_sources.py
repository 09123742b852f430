"""`dualwrite migrate` of a project file's sources: many SQLite files into one database, in priority order.

Before anything is written, every file is planned and the plans are checked together: two files that
would load a table (or view) of the same name into the same schema are refused, naming both files, as is
a target table that already exists (unless --resume). Then each source is migrated in turn (its own
schema and state schema, its rejects in DIR/SOURCE), with one summary table across the sources and one
JSON report. `--undo` drops, in reverse priority order, what each source's migration created (undo.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from sqlalchemy import inspect

from dualwrite.cli.options import confirm_destructive, existing_sqlite, write_report
from dualwrite.cli.signals import StopFlag
from dualwrite.errors import ConfigError
from dualwrite.settings import Settings, mask_text


def _label(s: Settings) -> str:
    return f"source {s.source} (P{s.priority})" if s.source else "source"


def _engine(s: Settings) -> Any:
    from dualwrite.engines import postgres_engine

    return postgres_engine(s.postgres_url, s.pg_schema, state_schema=s.state_schema, pool_size=1)


def undo_sources(sources: list[Settings], report_path: str | None, yes: bool = False) -> int:
    """Say what would be dropped (only what migrate created and marked), ask or need --yes, then drop it."""
    from dualwrite.migrate.undo import created, undo

    planned = []
    for s in sources:
        pg = _engine(s)
        try:
            with pg.connect() as conn:
                found = created(conn, s.pg_schema, str(s.sqlite_path))
                conn.rollback()
        finally:
            pg.dispose()
        if found["tables"] or found["views"] or found["schema"]:
            what = f"{len(found['tables'])} table(s), {len(found['views'])} view(s) in schema {s.pg_schema}"
            planned.append(what + (" and the schema" if found["schema"] else "") + f" (from {s.sqlite_path})")
    if planned:
        confirm_destructive("undo the migration", "drop " + "; ".join(planned), yes)
    report = []
    for s in reversed(sources):  # the last migrated first
        pg = _engine(s)
        try:
            found = undo(pg, s.pg_schema, str(s.sqlite_path))
        finally:
            pg.dispose()
        what = f"{len(found['tables'])} table(s), {len(found['views'])} view(s)"
        what += f", schema {s.pg_schema}" if found["schema"] else ""
        click.echo(f"{_label(s)}: {s.sqlite_path} -> schema {s.pg_schema}: dropped {what}")
        report.append({"source": s.source, "sqlite": str(s.sqlite_path), "schema": s.pg_schema, "dropped": found})
    write_report(report_path, {"undo": report})
    return 0


def plan_sources(sources: list[Settings], *, resume: bool, **reflect_kw: Any) -> list[Any]:
    """Each source's plan; refuses (ConfigError, one line) a collision between two files or with what the
    target already holds, before anything is written."""
    from dualwrite.migrate.schema import reflect

    plans = []
    for s in sources:
        existing_sqlite(s)
        try:
            plan = reflect(str(s.sqlite_path), **reflect_kw)
        except ValueError as exc:
            raise ConfigError(f"{_label(s)}: {s.sqlite_path}: {exc}") from None
        if plan.problems:
            raise ConfigError(f"{_label(s)}: {s.sqlite_path}: refusing to load: {'; '.join(plan.problems)}")
        plans.append(plan)
    taken: dict[tuple[str, str], Settings] = {}
    clashes = []
    for s, plan in zip(sources, plans, strict=True):
        for name in [p.name for p in plan.tables] + [v for v, _sql in plan.views]:
            other = taken.setdefault((s.pg_schema, name), s)
            if other is not s:
                clashes.append(
                    f"schema {s.pg_schema} would get {name!r} from both {other.sqlite_path} and {s.sqlite_path}"
                )
    if clashes:
        more = f" (and {len(clashes) - 1} more)" if len(clashes) > 1 else ""
        raise ConfigError(
            f"migrate: refused before writing anything: {clashes[0]}{more}; "
            "give the sources their own pg_schema in the project file"
        )
    if not resume:
        for s, plan in zip(sources, plans, strict=True):
            pg = _engine(s)
            try:
                with pg.connect() as conn:
                    have = set(inspect(conn).get_table_names(schema=s.pg_schema))
            finally:
                pg.dispose()
            clash = sorted(have & {p.name for p in plan.tables})
            if clash:
                raise ConfigError(
                    f"migrate: refused before writing anything: {_label(s)}: schema {s.pg_schema} already has "
                    f"{', '.join(clash)} (use --resume to continue a migration, or drop them)"
                )
    return plans


def migrate_sources(sources: list[Settings], said: str, *, report_path: str | None, **kw: Any) -> int:
    """Plan all, then migrate each in priority order; exit code as `dualwrite migrate` (the worst)."""
    from dualwrite.migrate.load import MigrateError, Options, run

    click.echo(f"dualwrite: {said}")
    reflect_kw = {k: kw.pop(k) for k in ("tables", "casts", "renames")}
    plans = plan_sources(sources, resume=kw["resume"], **reflect_kw)
    if kw.pop("dry_run"):
        report = []
        for s, plan in zip(sources, plans, strict=True):
            rows = sum(1 for _ in plan.tables)
            click.echo(
                f"{_label(s)}: {s.sqlite_path} -> schema {s.pg_schema}: {rows} table(s), {len(plan.views)} view(s)"
            )
            report.append(
                {"source": s.source, "sqlite": str(s.sqlite_path), "schema": s.pg_schema, "plan": plan.as_dict()}
            )
        write_report(report_path, {"dry_run": True, "sources": report})
        click.echo("migrate --dry-run: nothing written")
        return 0
    stop = stop_on_signal()
    rejects_dir = kw.pop("rejects_dir")
    results: list[tuple[Settings, Any]] = []
    code = rejected = 0
    for i, s in enumerate(sources, 1):
        click.echo(f"[{i}/{len(sources)}] {_label(s)}: {s.sqlite_path} -> schema {s.pg_schema}")
        opts = Options(
            str(s.sqlite_path),
            s.postgres_url,
            s.pg_schema,
            rejects_dir=str(Path(rejects_dir) / (s.source or "main")) if rejects_dir else None,
            state_schema=s.state_schema,
            should_stop=stop,
            **kw,
            **reflect_kw,
        )
        try:
            outcome = run(opts)
        except MigrateError as exc:
            raise ConfigError(f"{_label(s)}: {exc}") from None
        results.append((s, outcome))
        hard = [x for x in outcome.indexes + outcome.foreign_keys if not x.get("created")]
        if outcome.over_max_rejects:
            code = 1
            break
        if outcome.status == "stopped":
            code = 3
            break
        rejected += sum(int(t["rejected"] or 0) for t in outcome.tables)
        code = max(code, 0 if outcome.verified and not hard and not rejected else 1)
    click.echo(summary_table(results))
    for s, outcome in results:
        for note in outcome.plan.notes:
            click.echo(f"note: {s.source}: {note}")
    write_report(report_path, {"verified": code == 0, "sources": [_entry(s, o) for s, o in results]})
    verdict = {0: "every table of every source verified", 1: "NOT verified", 3: "stopped; run again with --resume"}
    if code == 1 and all(o.verified for _s, o in results):  # verified: read = written + rejected
        verdict[1] = f"every table of every source verified; {rejected} row(s) rejected: see {rejects_dir}"
    if results and results[-1][1].over_max_rejects:
        verdict[1] = "stopped, more than --max-rejects row(s) rejected; run again with --resume"
    click.echo(f"migrate: {verdict[code]}")
    return code


def _entry(s: Settings, outcome: Any) -> dict[str, Any]:
    return {"source": s.source, "priority": s.priority, "sqlite": str(s.sqlite_path), "schema": s.pg_schema} | {
        "outcome": outcome.as_dict()
    }


def summary_table(results: list[tuple[Settings, Any]]) -> str:
    head = ("source", "table", "read", "written", "rejected", "seconds", "verified")
    lines = [head]
    for s, outcome in results:
        for r in outcome.tables:
            verified = "yes" if r["verified"] else "no: " + r.get("why_not_verified", r["status"])
            read = "" if r["read"] is None else str(r["read"])
            lines.append(
                (
                    str(s.source),
                    r["table"],
                    read,
                    str(r["written"]),
                    str(r["rejected"]),
                    f"{r['seconds']:.2f}",
                    verified,
                )
            )
    widths = [max(len(x[i]) for x in lines) for i in range(len(head))]
    return "\n".join(
        mask_text("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip()) for line in lines
    )


def stop_on_signal() -> StopFlag:
    """SIGTERM/SIGINT finish the current chunk (a second one exits 130); both migrate paths use it."""
    return StopFlag(
        lambda signum: click.echo(f"signal {signum}: finishing the current chunk (run again with --resume)", err=True)
    ).install()


__all__ = ["migrate_sources", "plan_sources", "summary_table", "undo_sources"]
