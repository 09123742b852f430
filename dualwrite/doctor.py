"""`dualwrite doctor`: one line per backend, saying what is wrong and how to fix it, a `timezone` line (the
server's TimeZone and what dualwrite does about one that is not UTC), a `schema` line for drift
between the application's tables and the live ones, a `bookkeeping` line for dualwrite's own tables and a
`phase` line for the phase of record (failing when the two databases' records differ).

Capture copies exactly the model's columns (`RETURNING` of the Table's columns), so a column added on
SQLite by an application migration that the model does not know is never carried to Postgres — a
silent loss. The supported path for a schema change during a migration (README, "Schema changes"):
add the column on Postgres first, then on SQLite, then deploy the model that has it (writers, relay and
replayers); events of the new shape that reach an old replayer are dead-lettered as schema errors and
re-driven once it is updated. Until the model has the column, `find_drift` reports it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import redis
from sqlalchemy import Engine, Table, create_engine, inspect, text
from sqlalchemy.pool import NullPool

from dualwrite.bookkeeping import bookkeeping_gaps, gaps_text
from dualwrite.engines import (
    SESSION_TIMEZONE,
    check_postgres,
    open_redis,
    pg_engine,
    sqlite_read_engine,
)
from dualwrite.errors import ConfigError, first_line
from dualwrite.phase import Record
from dualwrite.phase_record import PhaseRecord
from dualwrite.redis_keys import phase_epoch_key, phase_key
from dualwrite.settings import Settings, mask_url
from dualwrite.tables import Tables

# Doctor only looks, so it waits out a commit's moment of exclusive lock but not a writer that holds the
# file for longer (a large write transaction in a rollback journal keeps readers out until it ends): it
# reports that at once instead of sleeping the writers' whole busy timeout (10 s) and saying "locked".
LOOK_BUSY_MS = 1000
LOCKED_HINT = (
    "another connection holds the file exclusively (a large write transaction in a rollback-journal file "
    "does, until it ends); run doctor again after it"
)


def replication_role_problem(settings: Settings) -> str | None:
    """Why this login cannot apply replicated rows (None: it can). The apply engine sets
    session_replication_role = replica so that foreign-key triggers do not refuse rows arriving out of
    order; a role that may not set it (not a superuser, no GRANT SET) breaks every apply on foreign keys."""
    engine = create_engine(settings.postgres_url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            user = conn.execute(text("SELECT current_user")).scalar()
            try:
                conn.execute(text("SET LOCAL session_replication_role = replica"))
            except Exception as exc:  # noqa: BLE001 - the refusal is the finding
                return (
                    f"role {user!r} cannot set session_replication_role ({first_line(exc)}); the apply needs it: "
                    f"connect as a superuser, or GRANT SET ON PARAMETER session_replication_role TO {user}"
                )
            finally:
                conn.rollback()
    finally:
        engine.dispose()
    return None


def run_checks(settings: Settings, tables: Tables | None = None) -> list[tuple[str, bool, str]]:
    """(name, passed, line) per check; the schema line only when the application's tables are given."""
    out: list[tuple[str, bool, str]] = []
    path = settings.sqlite_path
    if not path.exists():
        out.append(("sqlite", False, f"{path} does not exist (run `dualwrite init` or point --sqlite at it)"))
    else:
        engine = sqlite_read_engine(settings.sqlite_url, LOOK_BUSY_MS)  # as the file is: no WAL switch, no lock
        try:
            with engine.connect() as conn:
                version = conn.execute(text("select sqlite_version()")).scalar()
                mode = conn.execute(text("pragma journal_mode")).scalar()
            out.append(("sqlite", True, f"{path} (SQLite {version}, journal {mode})"))
        except Exception as exc:  # noqa: BLE001 - reported as a line
            out.append(("sqlite", False, f"{path}: {_problem(exc)}"))
        finally:
            engine.dispose()
    try:
        version = check_postgres(settings)
        problem = replication_role_problem(settings)
        where = f"{mask_url(settings.postgres_url)} (PostgreSQL {version}, schema {settings.pg_schema})"
        out.append(("postgres", problem is None, f"{where}: {problem}" if problem else where))
        out.append(_timezone_line(settings))
    except ConfigError as exc:
        out.append(("postgres", False, f"{exc}; is the server running and the URL right?"))
    if tables is not None:
        ok = {"sqlite_ok": out[0][1], "postgres_ok": out[1][1]}
        out.append(_looked("schema", lambda: _schema_line(settings, tables.tables(), **ok)))
    if out[0][1] and out[1][1]:
        out.append(_looked("bookkeeping", lambda: _bookkeeping_line(settings)))
        if out[-1][1]:
            out.append(_looked("phase", lambda: _phase_line(settings)))
    client = open_redis(settings.redis_url)
    try:
        info = client.info("server")
        out.append(
            (
                "redis",
                True,
                f"{mask_url(settings.redis_url)} (Redis {info.get('redis_version')}, namespace {settings.namespace})",
            )
        )
    except redis.RedisError as exc:
        out.append(("redis", False, f"cannot reach {mask_url(settings.redis_url)} ({exc}); start redis-server"))
    finally:
        client.close()
    return out


def _problem(exc: BaseException) -> str:
    problem = first_line(exc)
    if "database is locked" in problem:
        return f"{problem} after {LOOK_BUSY_MS / 1000:g} s: {LOCKED_HINT}"
    return problem


def _looked(name: str, look: Callable[[], tuple[str, bool, str]]) -> tuple[str, bool, str]:
    """A later look at a backend that the first lines found answering: one that fails now (a writer took the
    file exclusively since, the server went away) is that check's FAIL line, and the other checks still run."""
    try:
        return look()
    except Exception as exc:  # noqa: BLE001 - reported as a line
        return (name, False, _problem(exc))


def _bookkeeping_line(settings: Settings) -> tuple[str, bool, str]:
    """dualwrite's own tables on both sides (`dualwrite init` makes them)."""
    lite, pg = sqlite_read_engine(settings.sqlite_url, LOOK_BUSY_MS), pg_engine(settings, pool_size=1)
    try:
        gaps = bookkeeping_gaps(lite, pg, settings.state_schema)
    finally:
        lite.dispose()
        pg.dispose()
    if gaps:
        return ("bookkeeping", False, f"{gaps_text(gaps)} (run `dualwrite init`)")
    return ("bookkeeping", True, f"dualwrite's tables on SQLite and Postgres (schema {settings.state_schema})")


def _phase_line(settings: Settings) -> tuple[str, bool, str]:
    """The phase of record (the newer of the two databases' records; sqlite before the first change) and
    Redis' copy, only read (the processes correct a stale copy). Records that differ mean a phase change
    was recorded on one side only: every process follows the newer, but the other must be brought level."""
    lite, pg = sqlite_read_engine(settings.sqlite_url, LOOK_BUSY_MS), pg_engine(settings, pool_size=1)
    try:
        sides = PhaseRecord(readers={"sqlite": lite, "postgres": pg}, writers={}).read_sides()
    finally:
        lite.dispose()
        pg.dispose()
    if unread := {side: why for side, why in sides.items() if isinstance(why, str)}:
        return ("phase", False, "cannot read the record on " + "; ".join(f"{s}: {w}" for s, w in unread.items()))
    records = [r for r in sides.values() if isinstance(r, Record)]
    newest = max(records, key=lambda r: r.epoch, default=Record("sqlite", 0))
    client = open_redis(settings.redis_url)
    try:
        name, epoch = client.mget(phase_key(settings.namespace), phase_epoch_key(settings.namespace))
        copy = f"{name.decode()}@{int(epoch)}" if name is not None and epoch is not None else "-"
    except redis.RedisError:
        copy = "unreachable"
    finally:
        client.close()
    line = f"{newest.phase} (epoch {newest.epoch}{'' if records else ', none recorded yet'}; redis copy {copy})"
    if not records or (len(records) == len(sides) and len(set(records)) == 1):
        return ("phase", True, line)
    held = ", ".join(f"{side} {f'{r.phase}@{r.epoch}' if r else 'none'}" for side, r in sides.items())
    return ("phase", False, f"{line}: the records differ ({held}): run the same phase change again")


def _timezone_line(settings: Settings) -> tuple[str, bool, str]:
    """The TimeZone a new session on this database gets (server, database or role setting). Not a failure:
    dualwrite's own sessions always run in UTC, so the one rule (a naive value of a timezone-aware column
    is UTC) holds whatever it is; but the application's own Postgres sessions read naive values in it."""
    engine = create_engine(settings.postgres_url, poolclass=NullPool, connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as conn:
            zone = str(conn.exec_driver_sql("SHOW TimeZone").scalar())
    except Exception as exc:  # noqa: BLE001 - reported as a line
        return ("timezone", False, f"cannot read the server's TimeZone: {first_line(exc)}")
    finally:
        engine.dispose()
    if zone.upper() in ("UTC", "ETC/UTC", "UCT", "ETC/UCT", "ZULU", "ETC/ZULU", "GMT", "ETC/GMT"):
        return ("timezone", True, f"server TimeZone {zone}")
    return (
        "timezone",
        True,
        f"server TimeZone is {zone}, not UTC: dualwrite's sessions run with TimeZone={SESSION_TIMEZONE}, so a "
        f"naive value of a timezone-aware column is UTC on both sides (capture, apply, backfill COPY, verify); "
        f"your application's own Postgres sessions still read naive values as {zone}: pass aware datetimes, "
        "or set TimeZone=UTC for them (ALTER DATABASE ... SET TimeZone = 'UTC')",
    )


def _schema_line(
    settings: Settings, tables: list[Table], *, sqlite_ok: bool, postgres_ok: bool
) -> tuple[str, bool, str]:
    """The application's tables on each reachable backend against the models: drift means uncaptured
    columns."""
    problems = []
    checked = []
    if sqlite_ok:
        engine = sqlite_read_engine(settings.sqlite_url, LOOK_BUSY_MS)  # deferred: never the write lock
        try:
            problems += find_drift(engine, tables, backend="sqlite")
            checked.append("SQLite")
        finally:
            engine.dispose()
    if postgres_ok:
        engine = pg_engine(settings, pool_size=1)
        try:
            problems += find_drift(engine, tables, backend="postgres", schema=settings.pg_schema)
            checked.append("Postgres")
        finally:
            engine.dispose()
    if not checked:
        return ("schema", False, "not checked: no backend reachable")
    if problems:
        shown = "; ".join(str(p) for p in problems[:3])
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        return ("schema", False, f"{shown}{more}")
    return ("schema", True, f"{len(tables)} table(s) match the models on {' and '.join(checked)}")


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
                hint = "run `dualwrite init --create-tables`" if backend == "postgres" else "the application makes it"
                out.append(Drift(backend, table.name, f"does not exist ({hint})"))
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
