"""The one CLI, `dualwrite`: the group, `init`, `doctor` and `phase`; every other command lives in its own
module of this package and is imported on first use (`dualwrite --help` imports none of them).

Conventions: flags override DUALWRITE_* variables; exit 0 success, 1 a check failed, 2 usage or
configuration error; passwords are masked in every line printed.
"""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Any

import click

from dualwrite import __version__
from dualwrite.cli.options import (
    connection_options,
    fail,
    load_tables,
    one_line_errors,
    tables_options,
    write_report,
)
from dualwrite.cli.params import REPORT_PATH, check_report_path
from dualwrite.errors import ConfigError, first_line
from dualwrite.settings import Settings, mask_text

# command name -> "module:attribute", imported when the command is used or listed
COMMANDS = {
    "backfill": "dualwrite.cli.backfill:backfill",
    "migrate": "dualwrite.cli.migrate:command",
    "verify": "dualwrite.cli.verify:verify",
    "shadow": "dualwrite.cli.shadow:shadow",
    "cutover": "dualwrite.cli.cutover:cutover",
    "status": "dualwrite.cli.cutover:status",
    "demo": "dualwrite.cli.demo:demo",
    "bench": "dualwrite.cli.bench:bench",
}


class Group(click.Group):
    """Loads the command modules lazily; known errors become one masked line (options.one_line_errors)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *COMMANDS})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in COMMANDS and name not in self.commands:
            module, _, attr = COMMANDS[name].partition(":")
            self.add_command(getattr(importlib.import_module(module), attr), name)
        return super().get_command(ctx, name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return one_line_errors(super().invoke)(ctx)
        except (click.exceptions.ClickException, click.exceptions.Abort, click.exceptions.Exit):
            raise
        except Exception as exc:  # noqa: BLE001 - never a traceback: one line, the traceback with -v
            logging.getLogger("dualwrite.cli").debug("unexpected error", exc_info=True)
            fail(f"unexpected {type(exc).__name__}: {first_line(exc)} (dualwrite -v shows the traceback)", 1)

    def main(  # type: ignore[override]
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        """Click's own handling, except that a usage error is one line naming the flag (not usage + hint)."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, False, **extra)
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else "dualwrite"
            fail(f"{exc.format_message()} (see '{where} --help')", exc.exit_code)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=Group, name="dualwrite")
@click.version_option(__version__, prog_name="dualwrite")
@click.option("-v", "--verbose", is_flag=True, help="debug logging")
def main(verbose: bool) -> None:
    """Zero-downtime SQLite -> PostgreSQL cutover."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


@main.command()
@tables_options
@connection_options(sqlite="create")
@click.option("--create-tables", is_flag=True, help="also create the application's tables on Postgres (--metadata)")
def init(settings: Settings, reflect: bool, create_tables: bool) -> None:
    """Create dualwrite's bookkeeping tables on SQLite (in the application's file) and Postgres (in the
    state schema, `_dualwrite` by default); with --create-tables, the application's tables on Postgres too.
    Idempotent; nothing of the application's is changed."""
    from dualwrite.bookkeeping import create_schema
    from dualwrite.engines import check_postgres, pg_engine, sqlite_engine

    check_postgres(settings)
    flag = click.get_current_context().get_parameter_source("metadata_spec") is click.core.ParameterSource.COMMANDLINE
    if not create_tables and (flag or reflect):
        raise ConfigError("--metadata/--reflect given without --create-tables: init creates only dualwrite's tables")
    # DUALWRITE_METADATA alone (exported for every command) does not ask for the application's tables
    tables = load_tables(settings, reflect) if create_tables else None
    if tables is not None:  # the tables' schema (a project file's source names its own): created if missing
        from sqlalchemy.schema import CreateSchema

        engine = pg_engine(settings, pool_size=1)
        try:
            with engine.begin() as conn:
                conn.execute(CreateSchema(settings.pg_schema, if_not_exists=True))
        finally:
            engine.dispose()
    for name, engine, primary, app in (
        ("sqlite", sqlite_engine(settings.sqlite_url), True, None),
        ("postgres", pg_engine(settings), False, tables.tables() if tables is not None else None),
    ):
        try:
            created = create_schema(engine, app, primary=primary)
        finally:
            engine.dispose()
        where = f" (schema {settings.state_schema} for dualwrite's)" if name == "postgres" else ""
        click.echo(
            f"{name}: "
            + (f"created {len(created)} table(s){where}: {', '.join(created)}" if created else "already complete")
        )
    from dualwrite.cli import next_steps, render

    # the gate to dual_write wants these tables and a live DualWriter (writers_live): the flip is for once
    # the application writes through it (a write made without it is captured by no one)
    flip = f"dualwrite cutover flip{next_steps.tables_flag(reflect)}  # to dual_write"
    render.next_steps([f"{flip}, once every instance of your application writes through DualWriter"])


@main.command()
@tables_options
@connection_options(sqlite="unused")  # doctor reports a missing or foreign file on its own line
@click.option("--report", "report_path", default=None, type=REPORT_PATH, help="write the checks as JSON here")
def doctor(settings: Settings, reflect: bool, report_path: str | None) -> None:
    """Check SQLite, Postgres and Redis: one line each; dualwrite's tables and the phase of record (both
    databases' records and Redis' copy); with --metadata/--reflect, schema drift of the application's
    tables too. Only looks: never the write lock, nothing written to a database."""
    from dualwrite.cli import next_steps, render
    from dualwrite.doctor import run_checks

    check_report_path(report_path)
    tables = load_tables(settings, reflect, required=False)
    checks = [
        {"name": name, "ok": passed, "line": mask_text(line)} for name, passed, line in run_checks(settings, tables)
    ]
    for check in checks:
        click.echo(f"{check['name']:11} {'ok ' if check['ok'] else 'FAIL'} {check['line']}")
    ok = all(check["ok"] for check in checks)
    # tables missing on either side: init as a command to run, the tables flag carried over (the line's own
    # remedy cannot name it); then doctor again
    steps: list[str] = []
    if any(not c["ok"] and c["name"] in ("bookkeeping", "schema") and "`dualwrite init" in c["line"] for c in checks):
        flag = next_steps.tables_flag(reflect)
        steps = [next_steps.init_step(flag), f"dualwrite doctor{flag}"]
        render.next_steps(steps)
    write_report(report_path, {"ok": ok, "checks": checks, "next_steps": steps})
    sys.exit(0 if ok else 1)


@main.command()
@connection_options
@click.argument("target", required=False)
@click.option("--force", is_flag=True, help="allow a jump or an unsafe rollback")
@click.option("--reason", default="", help="why (recorded in the history)")
def phase(settings: Settings, target: str | None, force: bool, reason: str) -> None:
    """Show the phase and its history, or set it (prefer `dualwrite cutover flip`). The phase of record is
    kept in both databases, Redis holds its copy; `unknown` (exit 1) when none of them can be read."""
    from dualwrite.cli.options import open_backends, phase_lines, sqlite_answers
    from dualwrite.phase import ORDER

    if target and target not in ORDER:  # a usage error, found before anything is opened
        raise ConfigError(f"unknown phase {target!r}; phases are: {', '.join(ORDER)}")
    if target:
        sqlite_answers(settings)  # a phase change must not find out half-way that SQLite does not answer
    backends = open_backends(settings)
    try:
        if target:
            backends.phases.set(target, force=force, reason=reason)
        lines, known = phase_lines(backends, history=10)
    finally:
        backends.close()
    for line in lines:
        click.echo(mask_text(line))
    if not known:
        sys.exit(1)
