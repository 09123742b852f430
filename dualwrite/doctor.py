"""`dualwrite doctor`: one line per backend, saying what is wrong and how to fix it."""

from __future__ import annotations

import redis
from sqlalchemy import text

from dualwrite.engines import check_postgres, sqlite_engine
from dualwrite.errors import ConfigError
from dualwrite.settings import Settings, mask_url


def run_checks(settings: Settings) -> list[tuple[str, bool, str]]:
    out: list[tuple[str, bool, str]] = []
    path = settings.sqlite_path
    if not path.exists():
        out.append(("sqlite", False, f"{path} does not exist (run `dualwrite init` or point --sqlite at it)"))
    else:
        engine = sqlite_engine(settings.sqlite_url)
        try:
            with engine.connect() as conn:
                version = conn.execute(text("select sqlite_version()")).scalar()
                mode = conn.execute(text("pragma journal_mode")).scalar()
            out.append(("sqlite", True, f"{path} (SQLite {version}, journal {mode})"))
        except Exception as exc:  # noqa: BLE001 - reported as a line
            out.append(("sqlite", False, f"{path}: {str(exc).splitlines()[0]}"))
        finally:
            engine.dispose()
    try:
        version = check_postgres(settings)
        out.append(
            ("postgres", True, f"{mask_url(settings.postgres_url)} (PostgreSQL {version}, schema {settings.pg_schema})")
        )
    except ConfigError as exc:
        out.append(("postgres", False, f"{exc}; is the server running and the URL right?"))
    out.append(_schema_line(settings, sqlite_ok=out[0][1], postgres_ok=out[1][1]))
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=2)
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


def _schema_line(settings: Settings, *, sqlite_ok: bool, postgres_ok: bool) -> tuple[str, bool, str]:
    """The store tables on each reachable backend against the models: drift means uncaptured columns."""
    from dualwrite.drift import find_drift
    from dualwrite.engines import postgres_engine
    from dualwrite.registry import default_registry

    tables = [spec.table for spec in default_registry().tables()]
    problems = []
    checked = []
    if sqlite_ok:
        engine = sqlite_engine(settings.sqlite_url)
        try:
            problems += find_drift(engine, tables, backend="sqlite")
            checked.append("SQLite")
        finally:
            engine.dispose()
    if postgres_ok:
        engine = postgres_engine(settings.postgres_url, settings.pg_schema, pool_size=1)
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
    return ("schema", True, f"{len(tables)} store tables match the models on {' and '.join(checked)}")
