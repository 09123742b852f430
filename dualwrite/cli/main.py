"""The one CLI, `dualwrite`: the group, `init`, `doctor` and `phase`; every other command lives in its own
module of this package and is imported on first use (`dualwrite --help` imports none of them).

Conventions: flags override DUALWRITE_* variables; exit 0 success, 1 a check failed, 2 usage or
configuration error; passwords are masked in every line printed.
"""

from __future__ import annotations

import functools
import importlib
import json
import logging
import sys
from collections.abc import Callable
from typing import Any

import click
import redis
from sqlalchemy.exc import OperationalError

from dualwrite.errors import ConfigError, DualwriteError, PhaseError
from dualwrite.settings import Settings, load_settings, mask_text


def connection_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--sqlite/--postgres/--redis/--namespace/--pg-schema on every command that talks to a backend."""
    for opt in reversed(
        [
            click.option("--sqlite", "sqlite_url", help="SQLite file path or sqlite:/// URL [DUALWRITE_SQLITE_URL]"),
            click.option("--postgres", "postgres_url", help="postgresql:// URL [DUALWRITE_POSTGRES_URL]"),
            click.option("--redis", "redis_url", help="redis:// URL [DUALWRITE_REDIS_URL]"),
            click.option("--namespace", help="prefix of every Redis key [DUALWRITE_NAMESPACE]"),
            click.option("--pg-schema", "pg_schema", help="Postgres schema of the tables [DUALWRITE_PG_SCHEMA]"),
        ]
    ):
        fn = opt(fn)

    @functools.wraps(fn)
    def wrapper(
        *args: Any,
        sqlite_url: str | None,
        postgres_url: str | None,
        redis_url: str | None,
        namespace: str | None,
        pg_schema: str | None,
        **kw: Any,
    ) -> Any:
        settings = load_settings(
            sqlite_url=sqlite_url,
            postgres_url=postgres_url,
            redis_url=redis_url,
            namespace=namespace,
            pg_schema=pg_schema,
        )
        return fn(*args, settings=settings, **kw)

    return wrapper


def fail(message: str, code: int = 2) -> None:
    click.echo(f"error: {mask_text(message)}", err=True)
    sys.exit(code)


def write_report(path: str | None, data: dict[str, Any]) -> None:
    if path:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, default=str)


# command name -> "module:attribute", imported when the command is used or listed
COMMANDS = {
    "backfill": "dualwrite.cli.backfill:backfill",
    "migrate": "dualwrite.cli.migrate:command",
    "verify": "dualwrite.cli.verify:verify",
    "shadow": "dualwrite.cli.verify:shadow",
    "cutover": "dualwrite.cli.verify:cutover",
    "status": "dualwrite.cli.verify:status",
    "demo": "dualwrite.cli.demo:demo",
    "bench": "dualwrite.cli.bench:bench",
}


class Group(click.Group):
    """Turns known errors into one masked line and exit code 2 (1 for a refused phase change); loads
    the command modules lazily."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *COMMANDS})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in COMMANDS and name not in self.commands:
            module, _, attr = COMMANDS[name].partition(":")
            self.add_command(getattr(importlib.import_module(module), attr), name)
        return super().get_command(ctx, name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PhaseError as exc:
            fail(str(exc), 1)
        except (ConfigError, DualwriteError) as exc:
            fail(str(exc), 2)
        except OperationalError as exc:
            fail(f"database: {str(exc.orig or exc).strip().splitlines()[0]}", 2)
        except redis.ConnectionError as exc:
            fail(f"redis: {exc}", 2)


@click.group(cls=Group)
@click.option("-v", "--verbose", is_flag=True, help="debug logging")
def main(verbose: bool) -> None:
    """Zero-downtime SQLite -> PostgreSQL cutover."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


@main.command()
@connection_options
def init(settings: Settings) -> None:
    """Create the store schema on SQLite and Postgres (idempotent)."""
    from dualwrite.engines import check_postgres, postgres_engine, sqlite_engine
    from dualwrite.registry import default_registry
    from dualwrite.schema import create_schema

    check_postgres(settings)
    md = default_registry().metadata
    for name, engine, primary in (
        ("sqlite", sqlite_engine(settings.sqlite_url), True),
        ("postgres", postgres_engine(settings.postgres_url, settings.pg_schema), False),
    ):
        created = create_schema(engine, md, primary=primary)
        engine.dispose()
        click.echo(
            f"{name}: "
            + (f"created {len(created)} table(s): {', '.join(created)}" if created else "schema already complete")
        )


@main.command()
@connection_options
def doctor(settings: Settings) -> None:
    """Check SQLite, Postgres and Redis: one line each."""
    from dualwrite.doctor import run_checks

    ok = True
    for name, passed, line in run_checks(settings):
        click.echo(f"{name:9} {'ok ' if passed else 'FAIL'} {mask_text(line)}")
        ok = ok and passed
    sys.exit(0 if ok else 1)


@main.command()
@connection_options
@click.argument("target", required=False)
@click.option("--force", is_flag=True, help="allow a jump or an unsafe rollback")
@click.option("--reason", default="", help="why (recorded in the history)")
def phase(settings: Settings, target: str | None, force: bool, reason: str) -> None:
    """Show the phase and its history, or set it (prefer `dualwrite cutover flip`)."""
    from dualwrite.phase import PhaseStore

    store = PhaseStore(redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2), settings.namespace)
    if target:
        store.set(target, force=force, reason=reason)
    click.echo(f"phase: {store.current(fresh=True).name}")
    for h in store.history(10):
        click.echo(
            f"  {h['at']} {h['from']} -> {h['to']} by {h['by']}{' (forced)' if h['forced'] else ''}"
            f"{': ' + str(h['reason']) if h['reason'] else ''}"
        )
