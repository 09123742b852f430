"""`dualwrite verify`: prove SQLite and Postgres hold the same rows (counts, checksums over key ranges,
bisection to the row), for the application's tables."""

from __future__ import annotations

import sys
from typing import Any

import click

from dualwrite.cli import next_steps, render
from dualwrite.cli.options import (
    before_create_tables,
    confirm_destructive,
    connection_options,
    fail,
    load_tables,
    open_backends,
    tables_options,
    write_report,
)
from dualwrite.cli.params import SECONDS, Count, check_report_path, csv
from dualwrite.settings import Settings, mask_text

SHOWN_TABLES = 10  # more tables than this: the clean ones share one line


def _verdict(report: Any, clean: list[str], report_path: str | None) -> str:
    """The one line that sums the run up."""
    total = len(report.tables)
    if report.errored:
        failed = [t.table for t in report.tables if t.error]
        return f"verify: {len(failed)} of {total} table(s) could not be compared: {', '.join(failed)}"
    if report.clean:
        return f"verify: every table identical ({total})"
    sums = {k: sum(len(getattr(t, k)) for t in report.tables) for k in ("missing", "extra", "differing")}
    where = f"; every key in {report_path}" if report_path else "; every key with --report FILE"
    return (
        f"verify: {total - len(clean)} of {total} table(s) differ ("
        + ", ".join(f"{n} {k}" for k, n in sums.items())
        + f" row(s)){where}"
    )


def _rowid_reader(settings: Settings, views: list[str]) -> Any:
    """A SQLite read engine whose connections show rowid tables with their rowid as a column (None: none)."""
    if not views:
        return None
    from sqlalchemy import event

    from dualwrite.engines import sqlite_read_engine

    engine = sqlite_read_engine(settings.sqlite_url)

    @event.listens_for(engine, "connect")
    def _views(dbapi_conn: Any, _record: object) -> None:
        for sql in views:
            dbapi_conn.execute(sql)

    return engine


def _confirm_fix(plans: list[Any], yes: bool, progress: render.Progress) -> bool:
    """Say what --fix will change, table by table; ask on a terminal, refuse without --yes otherwise."""
    touched = [p for p in plans if not p.empty]
    if not touched:
        return True
    parts = ", ".join(f"{p.table}: {len(p.upserts)} re-applied, {len(p.deletes)} deleted" for p in touched)
    what = f"re-apply rows from SQLite to Postgres and delete extra rows dualwrite wrote ({parts})"
    with progress.paused():
        confirm_destructive("fix", what, yes)
    return True


@click.command()
@tables_options
@connection_options
@click.option("--tables", "table_lists", multiple=True, help="only these tables: a,b (default: every captured table)")
@click.option("--report", "report_path", default=None, help="write the JSON report to this file")
@click.option("--fix", is_flag=True, help="re-apply differing rows from SQLite to Postgres (apply rule); asks first")
@click.option("--yes", is_flag=True, help="with --fix: do not ask (required when not on a terminal)")
@click.option(
    "--fix-unowned",
    is_flag=True,
    help="with --fix: also overwrite/delete rows dualwrite never wrote (no version entry: plain migrate, direct write)",
)
@click.option("--segment-rows", type=Count(1, 10_000_000), default=10_000, show_default=True)
@click.option(
    "--recheck-delay",
    type=SECONDS,
    default=1.0,
    show_default=True,
    help="re-check differing keys after",
)
@click.option(
    "--incremental",
    is_flag=True,
    help="only the keys the change log touched since the last clean verify (a full verify when it cannot tell)",
)
@render.json_option
def verify(
    settings: Settings,
    reflect: bool,
    table_lists: tuple[str, ...],
    report_path: str | None,
    fix: bool,
    yes: bool,
    fix_unowned: bool,
    segment_rows: int,
    recheck_delay: float,
    incremental: bool,
    as_json: bool,
) -> None:
    """Compare every row of SQLite and Postgres (checksums over key ranges, bisection); progress per table
    with its ETA on stderr. Exit 0 identical, 1 differences found, 2 error. --fix says what it would change
    and asks (--yes: not); it touches only rows dualwrite wrote (others are listed as unowned) unless
    --fix-unowned. --incremental compares only what changed through dualwrite since the last clean verify
    (writes that bypass it are seen by a full verify only)."""
    from dualwrite.engines import check_postgres
    from dualwrite.migrate.schema import ROWID_COLUMN
    from dualwrite.verify.verifier import verify_backends

    check_report_path(report_path)
    check_postgres(settings)  # one line, exit 2, rather than an ERROR per table
    # reflected: a table without a primary key is compared by its rowid, which migrate keeps in _dw_rowid
    tables = load_tables(settings, reflect, rowid_key=ROWID_COLUMN)
    wanted = csv(table_lists)
    chosen = tables.select(names=wanted) if wanted else tables
    backends = open_backends(settings)
    refusal = before_create_tables(backends.postgres, chosen.tables(), settings, next_steps.tables_flag(reflect))
    if refusal:  # one line naming init, rather than an error per table that leads to doctor
        backends.close()
        fail(refusal)
    sqlite = _rowid_reader(settings, chosen.rowid_views())
    try:
        with render.Progress("verify") as progress:
            report = verify_backends(
                backends,
                chosen.tables(),
                fix=fix,
                fix_unowned=fix_unowned,
                confirm=lambda plans: _confirm_fix(plans, yes, progress),
                sqlite=sqlite,
                segment_rows=segment_rows,
                recheck_delay=recheck_delay,
                progress=progress.update,
                incremental_from_last=incremental,
                captured=tables.names(),
            )
    finally:
        backends.close()
        if sqlite is not None:
            sqlite.dispose()
    steps = next_steps.after_verify(report, next_steps.tables_flag(reflect), fixed=fix)
    write_report(report_path, report.to_dict())
    if as_json:
        render.emit_json(report.to_dict() | {"next_steps": steps})
    else:
        _print(report, fix, report_path)
        render.next_steps(steps)
    sys.exit(2 if report.errored else (0 if report.clean else 1))


def _print(report: Any, fix: bool, report_path: str | None) -> None:
    """One row per table (the clean ones on one line when there are many), what differs, the verdict."""
    if report.mode == "incremental":
        click.echo(f"incremental: {report.touched} key(s) the change log touched since the verify of {report.base}")
    elif report.fallback:
        click.echo(f"full verify: {report.fallback}")
    clean = [t.table for t in report.tables if t.clean and not t.error]
    shown = [t for t in report.tables if not (len(report.tables) > SHOWN_TABLES and t.table in clean)]
    columns = ["table", "state", "sqlite", "postgres", "missing", "extra", "differing", "queries", "seconds"]
    rows = []
    for t in shown:
        state = "ERROR" if t.error else ("clean" if t.clean else "DIFFERENT")
        n = t.counts()
        rows.append([t.table, state, t.sqlite_rows, t.postgres_rows, n["missing"], n["extra"], n["differing"]])
        rows[-1] += [t.queries, f"{t.seconds:.1f}"] + ([t.fixed, t.stale] if fix else [])
    if rows:
        render.table(columns + (["fixed", "stale"] if fix else []), rows, left=2)
    for t in shown:
        if t.error:
            click.echo(f"{t.table}: {mask_text(t.error)}")
        if t.unowned:
            more = " ..." if len(t.unowned) > 10 else ""
            unowned = ", ".join(t.unowned[:10])
            click.echo(f"{t.table}  not fixed, dualwrite never wrote them (--fix-unowned): {unowned}{more}")
        found = []
        for kind in ("missing", "extra", "differing"):
            keys = getattr(t, kind)
            if kind == "differing":  # each key with the columns that differ
                keys = [f"{k} ({', '.join(t.columns.get(k, []))})" for k in keys]
            if keys:
                found.append(f"{kind}: {', '.join(mask_text(k) for k in keys[:5])}{' ...' if len(keys) > 5 else ''}")
        if found:
            click.echo(f"{t.table}  " + "; ".join(found))
    if len(shown) < len(report.tables):
        click.echo(f"clean: {len(clean)} table(s): {', '.join(clean)}")
    click.echo(_verdict(report, clean, report_path))
