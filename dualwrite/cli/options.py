"""What every command shares: the connection options, the application's tables, one-line failures and
the JSON report (the flag value types are in params.py).

Tables come from `--metadata module:attr` (or DUALWRITE_METADATA): a `Tables`, a `MetaData`, a declarative
base, or a function returning one; or, with `--reflect`, from the SQLite file's own schema (any
database, no models needed). A command that needs tables and is given neither fails with exit 2.
"""

from __future__ import annotations

import functools
import json
import sqlite3
import sys
from collections.abc import Callable
from typing import Any

import click
import redis
from sqlalchemy.exc import OperationalError

from dualwrite.cli.params import csv, priorities
from dualwrite.cli.per_source import run_per_source, selection
from dualwrite.errors import ConfigError, DualwriteError, PhaseError, first_line
from dualwrite.settings import Settings, load_sources, mask_text

SQLITE_HEADER = b"SQLite format 3\x00"


def connection_options(fn: Callable[..., Any] | None = None, *, sqlite: str = "existing") -> Any:
    """--sqlite/--postgres/--redis/--namespace/--pg-schema/--state-schema and the Postgres pool
    (--pool-size/--max-overflow/--pool-pre-ping) on every command that talks to a backend; --config (the
    project file) with --source NAME / --priority P0: with a project file that declares sources, the
    command runs once per selected source, in priority order, and says which (see `run_per_source`).

    `sqlite`: "existing" (the default) refuses, before the command runs, a SQLite path that does not exist
    (opening it would create an empty database) or a file that is not SQLite; "create" (init, demo) accepts
    a missing path but not a file that is not SQLite; "answering" (a flip) also refuses a file that does not
    answer a read; "unused" checks nothing (the command never opens it).
    `--sqlite` given twice is refused: one file per command (several: a project file's sources)."""
    if fn is None:
        return functools.partial(connection_options, sqlite=sqlite)
    own_priority = any("--priority" in getattr(p, "opts", ()) for p in getattr(fn, "__click_params__", ()))
    takes_all = getattr(fn, "dualwrite_all_sources", False)
    selectors = [
        click.option("--config", "config", help="project file (default ./dualwrite.toml) [DUALWRITE_CONFIG]"),
        click.option("--source", "source", help="only this source of the project file"),
    ]
    if not own_priority:
        selectors.append(
            click.option(
                "--priority", "source_priorities", multiple=True, help="only the sources of these priorities: P0,P1"
            )
        )
    for opt in reversed(
        [
            click.option(
                "--sqlite",
                "sqlite_url",
                multiple=True,
                help="SQLite file path or sqlite:/// URL [DUALWRITE_SQLITE_URL]",
            ),
            click.option(
                "--postgres",
                "--postgresql-url",  # the Track C plan's scripts' name for it
                "postgres_url",
                help="postgresql:// URL [DUALWRITE_POSTGRES_URL]",
            ),
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
            *selectors,
        ]
    ):
        fn = opt(fn)

    @functools.wraps(fn)
    def wrapper(
        *args: Any,
        sqlite_url: tuple[str, ...],
        postgres_url: str | None,
        redis_url: str | None,
        namespace: str | None,
        pg_schema: str | None,
        state_schema: str | None,
        pool_size: str | None,
        max_overflow: str | None,
        pool_pre_ping: bool | None,
        config: str | None,
        source: str | None,
        **kw: Any,
    ) -> Any:
        if len(sqlite_url) > 1:
            raise ConfigError(
                f"--sqlite given {len(sqlite_url)} times ({', '.join(sqlite_url)}): a command takes one SQLite "
                "file; several files into one database are a project file's [sources.NAME] (dualwrite.toml)"
            )
        wanted = csv(kw.get("priorities", ()) if own_priority else kw.pop("source_priorities", ()))
        runs = load_sources(
            source=source, priorities=priorities(wanted) or None, config=config,
            sqlite_url=sqlite_url[0] if sqlite_url else None, postgres_url=postgres_url, redis_url=redis_url,
            namespace=namespace, pg_schema=pg_schema, state_schema=state_schema, pool_size=pool_size,
            max_overflow=max_overflow, pool_pre_ping=pool_pre_ping, metadata=kw.pop("metadata_spec", None),
        )  # fmt: skip
        if wanted and runs[0].source is None and not own_priority:
            raise ConfigError("--priority selects sources of a project file; none is given (dualwrite.toml, --config)")
        if kw.get("daemon") and len(runs) > 1:  # it would serve the first source for ever, the others never
            raise ConfigError(
                f"--daemon serves one source, {len(runs)} are selected: start one per source (--source NAME)"
            )
        if sqlite != "unused" and not (takes_all and runs[0].source is not None):  # those check each source
            for each in runs:
                sqlite_file(each, create=sqlite == "create", answers=sqlite == "answering")
        try:
            if takes_all:
                return fn(*args, settings=runs[0], sources=runs, **kw)
            if runs[0].source is None:
                return fn(*args, settings=runs[0], **kw)
            return run_per_source(fn, runs, selection(runs, source, wanted), args, kw)
        except OperationalError as exc:
            if not isinstance(getattr(exc, "orig", None), sqlite3.Error):
                raise
            # "database is locked" says neither which file nor who holds it: name the file at least
            files = ", ".join(dict.fromkeys(str(r.sqlite_path) for r in runs))
            raise ConfigError(f"sqlite {files}: {first_line(exc.orig)}") from None

    return one_line_errors(wrapper)


def retention_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--stream-retention/--outbox-retention (stream/retention.py) for the commands that trim, prune or show
    it; put it below @connection_options (it overrides the loaded settings)."""
    fn = click.option(
        "--outbox-retention",
        "outbox_retention",
        default=None,
        help="keep published outbox rows this long, e.g. 24h (default 24h) [DUALWRITE_OUTBOX_RETENTION]",
    )(fn)
    fn = click.option(
        "--stream-retention",
        "stream_retention",
        default=None,
        help="acknowledged stream entries kept below the trim point (default 10000) [DUALWRITE_STREAM_RETENTION]",
    )(fn)

    @functools.wraps(fn)
    def wrapper(
        *args: Any, settings: Settings, stream_retention: str | None, outbox_retention: str | None, **kw: Any
    ) -> Any:
        from dualwrite.settings import with_retention

        return fn(*args, settings=with_retention(settings, stream_retention, outbox_retention), **kw)

    return wrapper


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
    from dualwrite.tables import Tables, TableSpec

    if reflect and settings.metadata:
        raise ConfigError("--reflect and --metadata/DUALWRITE_METADATA: give one of them")
    if settings.source is not None:  # a project file's source: its tables, labelled with its name and priority
        reflect = reflect or settings.reflect
        if settings.metadata or reflect:
            found = load_tables(settings.with_(source=None), reflect, rowid_key=rowid_key)
            return Tables(TableSpec(s.table, settings.source, settings.priority, s.tenant_key) for s in found)
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
    sqlite_file(settings, create=False)


def sqlite_file(settings: Settings, *, create: bool = False, answers: bool = False) -> None:
    """Refuse a SQLite path that does not exist (unless `create`), is not a file, or is not SQLite."""
    where = settings.origins.get("sqlite_url", "the default --sqlite")
    path = settings.sqlite_path
    if not path.exists():
        if not create:
            raise ConfigError(f"{where}: file {str(path)!r} does not exist (only `dualwrite init` creates one)")
        if not path.parent.is_dir():
            raise ConfigError(f"{where}: folder {str(path.parent)!r} does not exist")
        return
    if not path.is_file():
        raise ConfigError(f"{where}: {str(path)!r} is not a file")
    try:
        with path.open("rb") as fh:
            head = fh.read(len(SQLITE_HEADER))
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {str(path)!r} ({exc.strerror or exc})") from None
    if head and head != SQLITE_HEADER:  # an empty file is an empty database
        raise ConfigError(f"{where}: {str(path)!r} is not a SQLite database file")
    if answers:
        sqlite_answers(settings)


def sqlite_answers(settings: Settings) -> None:
    """Refuse a SQLite file that does not answer a read (corrupt, unreadable): a command about to change
    the phase or the data must not find that out half-way."""
    path = settings.sqlite_path
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            con.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise ConfigError(f"sqlite {str(path)!r} does not answer: {exc}") from None


def open_backends(settings: Settings, *, bookkeeping: str | None = None) -> Any:
    """The process' Backends. bookkeeping: the tables flag of a command that cannot run before `dualwrite
    init` (its own tables missing on either side): refused with one line naming init, exit 2."""
    from dualwrite.engines import Backends

    backends = Backends(settings)
    refusal = bookkeeping is not None and before_init(backends.sqlite_read, backends.postgres, settings, bookkeeping)
    if refusal:
        backends.close()
        fail(refusal)
    return backends


def before_init(sqlite: Any, postgres: Any, settings: Settings, flag: str) -> str | None:
    """The refusal of a command that cannot run before `dualwrite init` (dualwrite's tables missing on
    either side), naming init with the tables flag `flag`; None when they are there."""
    from dualwrite.bookkeeping import bookkeeping_gaps, gaps_text
    from dualwrite.cli.next_steps import init_step

    gaps = bookkeeping_gaps(sqlite, postgres, settings.state_schema)
    if not gaps:
        return None
    return f"{gaps_text(gaps)}: run `{init_step(flag).split('  #')[0]}` first"


def before_create_tables(postgres: Any, tables: list[Any], settings: Settings, flag: str) -> str | None:
    """The refusal of a command that reads the application's tables on Postgres before they exist there
    (`dualwrite init --create-tables` makes them): those missing, and init; None when all are there."""
    from sqlalchemy import inspect

    with postgres.connect() as conn:
        existing = set(inspect(conn).get_table_names(schema=settings.pg_schema))
        conn.rollback()
    missing = [t.name for t in tables if t.name not in existing]
    if not missing:
        return None
    return (
        f"postgres (schema {settings.pg_schema}): your table(s) {', '.join(missing)} do not exist there: "
        f"run `dualwrite init{flag} --create-tables` first"
    )


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


def phase_doc(backends: Any, *, history: int = 5) -> dict[str, Any]:
    """phase_lines as data, for --json: the phase (name None when unknown, with the reason), where it
    comes from, the record on each database, Redis' copy, and the recent history."""
    import redis

    from dualwrite.errors import PhaseUnknownError

    phases = backends.phases
    try:
        p = phases.current(fresh=True)
    except PhaseUnknownError as exc:
        return {"name": None, "known": False, "error": str(exc)}
    doc: dict[str, Any] = {
        "name": p.name,
        "known": True,
        "primary": p.primary,
        "reads": p.reads,
        "shadow": p.shadow,
        "epoch": phases.epoch,
        "source": phases.source,
    }
    if phases.record is not None:
        doc["record"] = {side: _copy(found) for side, found in phases.record.read_sides().items()}
    try:
        doc["history"] = phases.history(history)
    except redis.RedisError as exc:
        doc["history"], doc["history_error"] = [], f"redis: {exc}"
    return doc


def _copy(found: Any) -> str:
    """One side's record for a status line: phase@epoch, none recorded, or why it could not be read."""
    if isinstance(found, str):
        return f"unreadable ({found})"
    return "none recorded" if found is None else f"{found.phase}@{found.epoch}"


def confirm_destructive(action: str, what: str, yes: bool) -> None:
    """A command about to delete or overwrite rows (`what` says which): `--yes` goes on; on a terminal, ask
    (no: Aborted, exit 1); otherwise refuse, exit 2: a script must say so."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise ConfigError(f"refusing to {action} without --yes (stdin is not a terminal); it would {what}")
    click.confirm(f"{what[0].upper()}{what[1:]}?", abort=True)


def fail(message: str, code: int = 2) -> None:
    click.echo(f"error: {mask_text(message)}", err=True)
    sys.exit(code)


def write_report(path: str | None, data: dict[str, Any]) -> None:
    if path:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, default=str)
