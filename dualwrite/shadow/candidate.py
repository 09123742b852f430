"""The candidate read of a shadow comparison: `fn` on the other backend in one transaction, off the request path.

Postgres candidates use the reader's own small engine whose sessions carry a statement timeout (set once per
connection, not per read) and that does not ping on checkout: a candidate is 3 round trips (BEGIN, the read,
ROLLBACK), not 5, and takes no connection from the application's pool. A stale connection costs one
comparison (counted "error"), never a read."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine

from dualwrite import metrics
from dualwrite.engines import read_rolled_back, session_options

if TYPE_CHECKING:
    from dualwrite.engines import Backends


class CandidateReads:
    """Candidate reads for one ShadowReader: a Postgres engine per writer's Backends, built on first use."""

    def __init__(self, timeout: float, pool_size: int) -> None:
        self.timeout, self.pool_size = timeout, pool_size
        self._engines: dict[int, tuple[Any, Engine]] = {}  # Postgres candidate engine per writer
        self._lock = threading.Lock()
        self._child = metrics.Children()

    def read(self, backends: Backends, backend: str, store: str, query: str, fn: Callable[[Any], Any]) -> Any:
        """fn on `backend` in one transaction, as backends.timed_read does; Postgres through the reader's engine.
        Timed as a read of `backend` and, apart, as the candidate (dualwrite_shadow_candidate_duration_seconds)."""
        start = time.perf_counter()
        try:
            if backend != "postgres":
                return backends.timed_read(backend, store, query, fn)
            try:
                return read_rolled_back(self.engine(backends), fn)
            finally:
                self._child(metrics.READ_DURATION, backend, store, query).observe(time.perf_counter() - start)
        finally:
            self._child(metrics.SHADOW_CANDIDATE, backend, store, query).observe(time.perf_counter() - start)

    def engine(self, backends: Backends) -> Engine:
        owner = backends.postgres
        found = self._engines.get(id(owner))
        if found is not None and found[0] is owner:
            return found[1]
        with self._lock:
            found = self._engines.get(id(owner))
            if found is not None and found[0] is owner:
                return found[1]
            settings = backends.settings  # the session options of dualwrite.engines.postgres_engine
            options = session_options(settings.pg_schema, settings.state_schema)
            timeout_ms = int(self.timeout * 1000)
            if timeout_ms > 0:
                options += f" -cstatement_timeout={timeout_ms}"
            engine = create_engine(
                owner.url,
                pool_size=self.pool_size,
                max_overflow=self.pool_size,
                connect_args={"options": options, "connect_timeout": 5},
            )
            self._engines[id(owner)] = (owner, engine)
            return engine

    def close(self) -> None:
        with self._lock:
            engines, self._engines = list(self._engines.values()), {}
        for _owner, engine in engines:
            engine.dispose()
