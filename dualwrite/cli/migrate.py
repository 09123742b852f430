"""`dualwrite migrate`: move a SQLite file into a PostgreSQL schema (see backfill/migrate/__init__.py).

Exit codes: 0 every table verified; 1 rows were rejected (see the rejects file), a table did not verify
(or a constraint/view could not be created: see the report); 2 refused before loading (name collisions,
existing tables, bad options) or stopped by `--on-error stop`; 3 stopped early (signal or --max-chunks):
run again with `--resume`.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import click

from dualwrite.cli import migrate_sources as many
from dualwrite.cli.options import connection_options, existing_sqlite, fail
from dualwrite.cli.params import REPORT_PATH, Count, max_rejects_option
from dualwrite.cli.per_source import all_sources, selection
from dualwrite.settings import Settings


def _summary_table(rows: list[dict[str, Any]]) -> str:
    head = ("table", "read", "written", "rejected", "seconds", "rows/s", "verified")
    lines = [head]
    for r in rows:
        lines.append(
            (
                r["table"],
                "" if r["read"] is None else str(r["read"]),
                str(r["written"]),
                str(r["rejected"]),
                f"{r['seconds']:.2f}",
                "" if r["rows_per_second"] is None else f"{r['rows_per_second']:.0f}",
                "yes" if r["verified"] else ("no: " + r.get("why_not_verified", r["status"])),
            )
        )
    widths = [max(len(x[i]) for x in lines) for i in range(len(head))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip() for line in lines)


@click.command("migrate")
@connection_options
@all_sources
@click.option("--tables", "tables", multiple=True, help="only these source tables (repeatable)")
@click.option("--cast", "casts", multiple=True, metavar="TABLE.COLUMN=TYPE", help="override a column's type")
@click.option("--rename", "renames", multiple=True, metavar="TABLE[.COLUMN]=NAME", help="Postgres name")
@click.option("--dry-run", is_flag=True, help="print the plan (types, names, problems); change nothing")
@click.option("--report", "report_path", default=None, type=REPORT_PATH, help="write the JSON report here")
@click.option("--rejects", "rejects_dir", default="migrate-rejects", show_default=True, help="reject dir")
@click.option("--on-error", type=click.Choice(["reject", "stop"]), default="reject", show_default=True)
@max_rejects_option("stop (after the current chunk, exit 1; then --resume)")
@click.option("--resume", is_flag=True, help="continue an interrupted migration from its checkpoints")
@click.option("--chunk-size", default=25_000, show_default=True, type=Count(1, 10_000_000))
@click.option("--versioned", is_flag=True, help="record per-row versions (_dw_versions) while copying")
@click.option(
    "--keep-state",
    is_flag=True,
    help="keep the migration's own tables (state schema) after success; they always stay for --resume",
)
@click.option("--undo", is_flag=True, help="drop what migrate created from these files (tables, views, schema)")
@click.option("--yes", is_flag=True, help="with --undo: do not ask (required when not on a terminal)")
@click.option("--max-chunks", type=int, default=None, hidden=True, help="stop after N chunks (testing)")
def command(
    settings: Settings,
    sources: list[Settings],
    undo: bool,
    yes: bool,
    tables: tuple[str, ...],
    casts: tuple[str, ...],
    renames: tuple[str, ...],
    dry_run: bool,
    report_path: str | None,
    rejects_dir: str,
    on_error: str,
    max_rejects: int | None,
    resume: bool,
    chunk_size: int,
    versioned: bool,
    keep_state: bool,
    max_chunks: int | None,
) -> None:
    """Copy a SQLite database (--sqlite, opened read-only) into PostgreSQL (--postgres, schema --pg-schema,
    created if missing): schema with casting rules, data, constraints, verification. The migration's own
    tables live in --state-schema and are dropped after success (unless --keep-state): the target schema
    holds the source's tables and nothing else. With a project file, every selected source's file in priority
    order (--source, --priority); --undo drops what migrate created, and only that."""
    from dualwrite.migrate.load import MigrateError, Options, run
    from dualwrite.migrate.schema import parse_pairs

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if undo or settings.source is not None:
        ctx = click.get_current_context()
        said = selection(sources, ctx.params.get("source"), list(ctx.params.get("source_priorities") or ()))
        if undo:
            if settings.source is not None:
                click.echo(f"dualwrite: {said}")
            sys.exit(many.undo_sources(sources, report_path, yes))
        kw = dict(
            casts=parse_pairs(casts, "--cast"), renames=parse_pairs(renames, "--rename"), tables=list(tables) or None
        )
        if len(sources) > 1 and any(kw.values()):
            fail("--tables/--cast/--rename name one file's tables: pick its source with --source NAME")
        sys.exit(
            many.migrate_sources(
                sources, said, report_path=report_path, dry_run=dry_run, rejects_dir=rejects_dir,
                on_error=on_error, max_rejects=max_rejects, resume=resume, chunk_size=chunk_size, versioned=versioned,
                keep_state=keep_state, max_chunks=max_chunks, **kw,
            )
        )  # fmt: skip
    # Table names may contain commas: --tables is repeatable, one name each.
    table_list = list(tables) or None
    try:
        existing_sqlite(settings)
        opts = Options(
            str(settings.sqlite_path), settings.postgres_url, settings.pg_schema, tables=table_list,
            casts=parse_pairs(casts, "--cast"), renames=parse_pairs(renames, "--rename"), dry_run=dry_run,
            rejects_dir=rejects_dir, on_error=on_error, max_rejects=max_rejects, resume=resume, chunk_size=chunk_size,
            versioned=versioned, max_chunks=max_chunks, state_schema=settings.state_schema, keep_state=keep_state,
        )  # fmt: skip
    except ValueError as exc:
        fail(str(exc))
    opts.should_stop = many.stop_on_signal()
    try:
        outcome = run(opts)
    except MigrateError as exc:
        fail(str(exc))
    report = outcome.as_dict()
    if report_path:
        with open(report_path, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=2, default=str)
    if dry_run:
        click.echo(json.dumps(report["plan"], indent=2, default=str))
        sys.exit(0)
    click.echo(_summary_table(outcome.tables))
    for note in outcome.plan.notes:
        click.echo(f"note: {note}")
    failed = [x for x in outcome.indexes + outcome.foreign_keys if not x.get("created")]
    failed += [x for x in outcome.foreign_keys if x.get("not_valid")]
    for x in failed:
        state = "added NOT VALID" if x.get("not_valid") else "not created"
        click.echo(f"constraint {x['name']} on {x['table']}: {state}: {x.get('error')}", err=True)
    for v in outcome.views:
        if not v.get("created"):
            click.echo(f"view {v['name']}: not created ({v.get('error')}); recreate it by hand", err=True)
    if outcome.rejects_file and any(t["rejected"] for t in outcome.tables):
        click.echo(f"rejected rows: {outcome.rejects_file}")
    if outcome.over_max_rejects:
        click.echo(f"migrate: stopped, more than --max-rejects {max_rejects} row(s) rejected; run again with --resume")
        sys.exit(1)
    if outcome.status == "stopped":
        click.echo("migrate: stopped; run again with --resume")
        sys.exit(3)
    hard_fail = [x for x in outcome.indexes + outcome.foreign_keys if not x.get("created")]
    if not outcome.verified or hard_fail:
        click.echo("migrate: NOT verified")
        sys.exit(1)
    click.echo(f"migration state: {outcome.state}")
    rejected = sum(int(t["rejected"] or 0) for t in outcome.tables)
    if rejected:  # verified means read = written + rejected: the rejected rows are still not in Postgres
        click.echo(f"migrate: done, every table verified; {rejected} row(s) rejected: see {outcome.rejects_file}")
        sys.exit(1)
    click.echo("migrate: done, every table verified")
    sys.exit(0)
