"""`dualwrite doctor`: one line per backend, saying what is wrong and how to fix it."""

from __future__ import annotations

import redis
from sqlalchemy import text

from dualwrite.db import check_postgres, sqlite_engine
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
