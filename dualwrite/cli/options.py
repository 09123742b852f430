"""What every command shares: the connection options, the application's tables, one-line failures and
the JSON report.

Tables come from `--metadata module:attr` (or DUALWRITE_METADATA): a `Tables`, a `MetaData`, a declarative
base, or a function returning one; or, with `--reflect`, from the SQLite file's own schema (any
database, no models needed). A command that needs tables and is given neither fails with exit 2.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import redis
from sqlalchemy.exc import OperationalError

from dualwrite.errors import ConfigError, DualwriteError, PhaseError, first_line
from dualwrite.settings import Settings, load_settings, mask_text


def connection_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--sqlite/--postgres/--redis/--namespace/--pg-schema/--state-schema and the Postgres pool
    (--pool-size/--max-overflow/--pool-pre-ping) on every command that talks to a backend."""
    for opt in reversed(
        [
            click.option("--sqlite", "sqlite_url", help="SQLite file path or sqlite:/// URL [DUALWRITE_SQLITE_URL]"),
            click.option("--postgres", "postgres_url", help="postgresql:// URL [DUALWRITE_POSTGRES_URL]"),
            click.option("--redis", "redis_url", help="redis:// URL [DUALWRITE_REDIS_URL]"),
            click.option("--namespace", help="prefix of every Redis key [DUALWRITE_NAMESPACE]"),
            click.option("--pg-schema", "pg_schema", help="Postgres schema of the tables [DUALWRITE_PG_SCHEMA]"),
            click.option(
                "--state-schema",
                "state_schema",
                help="Postgres schema of dualwrite's own tables (default _dualwrite) [DUALWRITE_STATE_SCHEMA]",
            ),
            click.option(
                "--pool-size", "pool_size", help="connections kept by each Postgres engine (5) [DUALWRITE_POOL_SIZE]"
            ),
            click.option(
                "--max-overflow",
                "max_overflow",
                help="extra connections per Postgres engine under load (default 5) [DUALWRITE_MAX_OVERFLOW]",
            ),
            click.option(
                "--pool-pre-ping/--no-pool-pre-ping",
                "pool_pre_ping",
                default=None,
                help="test a pooled connection before use (default on) [DUALWRITE_POOL_PRE_PING]",
            ),
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
        state_schema: str | None,
        pool_size: str | None,
        max_overflow: str | None,
        pool_pre_ping: bool | None,
        **kw: Any,
    ) -> Any:
        settings = load_settings(
            sqlite_url=sqlite_url,
            postgres_url=postgres_url,
            redis_url=redis_url,
            namespace=namespace,
            pg_schema=pg_schema,
            state_schema=state_schema,
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_pre_ping=pool_pre_ping,
            metadata=kw.pop("metadata_spec", None),
        )
        return fn(*args, settings=settings, **kw)

    return one_line_errors(wrapper)


def one_line_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Known errors become one masked line and exit code 2 (1 for a refused phase change), whether the
    command runs under the `dualwrite` group or on its own."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kw: Any) -> Any:
        try:
            return fn(*args, **kw)
        except PhaseError as exc:
            fail(str(exc), 1)
        except DualwriteError as exc:
            fail(str(exc), 2)
        except OperationalError as exc:
            fail(f"database: {first_line(exc)}", 2)
        except redis.ConnectionError as exc:
            fail(f"redis: {exc}", 2)

    return wrapper


def tables_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--metadata and --reflect: where the command's tables come from (see the module docstring). Put it
    above @connection_options; the command gets `reflect: bool` and reads the spec from settings."""
    fn = click.option(
        "--reflect", is_flag=True, help="use the SQLite file's own tables (no models needed) instead of --metadata"
    )(fn)
    return click.option(
        "--metadata",
        "metadata_spec",
        default=None,
        help="module:attr of the application's Tables, MetaData or declarative base [DUALWRITE_METADATA]",
    )(fn)


def load_tables(
    settings: Settings, reflect: bool = False, *, required: bool = True, rowid_key: str | None = None
) -> Any:
    """The application's Tables (see the module docstring); None when not required and not given.
    `rowid_key`: with --reflect, tables without a primary key are keyed by it (Tables.reflect)."""
    from dualwrite.engines import sqlite_read_engine
    from dualwrite.tables import Tables

    if reflect and settings.metadata:
        raise ConfigError("--reflect and --metadata/DUALWRITE_METADATA: give one of them")
    if settings.metadata:
        return Tables.load(settings.metadata)
    if reflect:
        existing_sqlite(settings)
        engine = sqlite_read_engine(settings.sqlite_url)
        try:
            return Tables.reflect(engine, rowid_key=rowid_key)
        finally:
            engine.dispose()
    if required:
        raise ConfigError(
            "which tables? give --metadata module:attr (your models' MetaData or declarative base; "
            "or DUALWRITE_METADATA), or --reflect to use the SQLite file's own tables"
        )
    return None


def existing_sqlite(settings: Settings) -> None:
    """Refuse a SQLite path that does not exist (opening it would create an empty database)."""
    path = settings.sqlite_path
    if not path.is_file():
        raise ConfigError(f"--sqlite: file {str(path)!r} does not exist")


def open_backends(settings: Settings) -> Any:
    from dualwrite.engines import Backends

    return Backends(settings)


def phase_lines(backends: Any, *, history: int = 5) -> tuple[list[str], bool]:
    """The phase (or `unknown`: neither Redis nor a database answers), where it comes from, each copy
    (the record on both databases, Redis'), and the recent history; and whether the phase is known."""
    import redis

    from dualwrite.errors import PhaseUnknownError

    phases = backends.phases
    try:
        p = phases.current(fresh=True)
    except PhaseUnknownError as exc:
        return [f"phase: unknown ({exc})"], False
    lines = [
        f"phase: {p.name} (primary {p.primary}, reads {p.reads}, shadow {p.shadow or '-'}; "
        f"epoch {phases.epoch}, from {phases.source})"
    ]
    if phases.record is not None:
        copies = [f"{side} {_copy(found)}" for side, found in phases.record.read_sides().items()]
        redis_copy = "unreachable" if not phases.redis_ok else "-"
        try:
            name, epoch = backends.redis.mget(phases.key, phases.epoch_key)
            if name is not None:
                redis_copy = f"{name.decode()}@{int(epoch) if epoch is not None else '?'}"
        except redis.RedisError:
            redis_copy = "unreachable"
        lines.append("  of record: " + "; ".join(copies) + f"; redis copy: {redis_copy}")
    try:
        for h in phases.history(history):
            lines.append(
                f"  {h['at']} {h['from']} -> {h['to']} by {h['by']}{' (forced)' if h['forced'] else ''}"
                f"{': ' + str(h['reason']) if h['reason'] else ''}"
            )
    except redis.RedisError as exc:
        lines.append(f"  history: unavailable (redis: {exc})")
    return lines, True


def _copy(found: Any) -> str:
    """One side's record for a status line: phase@epoch, none recorded, or why it could not be read."""
    if isinstance(found, str):
        return f"unreadable ({found})"
    return "none recorded" if found is None else f"{found.phase}@{found.epoch}"


def fail(message: str, code: int = 2) -> None:
    click.echo(f"error: {mask_text(message)}", err=True)
    sys.exit(code)


def check_report_path(path: str | None) -> None:
    """Fail before any work when a --report file could not be written (its folder is missing)."""
    if path and not Path(path).expanduser().resolve().parent.is_dir():
        raise ConfigError(f"--report: folder {str(Path(path).parent)!r} does not exist")


def write_report(path: str | None, data: dict[str, Any]) -> None:
    if path:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, default=str)


def csv(values: tuple[str, ...]) -> list[str]:
    """Flag values given repeatedly and/or comma-separated, as one list."""
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


def priorities(values: list[str]) -> list[int]:
    try:
        return [int(p[1:] if p[:1] in "Pp" else p) for p in values]
    except ValueError:
        raise ConfigError(f"--priority takes P0,P1,... (got {','.join(values)})") from None
