"""The application before dualwrite: its own SQLAlchemy engine on its SQLite file, nothing of ours in the
process (`python -m tests.userapp.writer --plain ...`). It offers the few things of a DualWriter that the
workload uses (session, begin, the phase's name, the engines a writer looks its ledger up in), so the same
transactions run, logged in the same format.

The engine is the SQLAlchemy documentation's recipe for SQLite writers: the driver's own transaction
handling off, BEGIN IMMEDIATE (several processes write the file: a deferred transaction that reads and then
writes could fail at once on the other's lock), foreign keys on (the models' ON DELETE actions), a busy
timeout; the file keeps its journal mode.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Delete, Engine, Insert, RowMapping, Update, create_engine, event
from sqlalchemy.orm import Session

BUSY_SECONDS = 30.0


def plain_engine(url: str) -> Engine:
    """The application's own write engine on its SQLite file."""
    engine = create_engine(url if "://" in url else f"sqlite:///{url}", connect_args={"timeout": BUSY_SECONDS})

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: sqlite3.Connection, _record: object) -> None:
        dbapi_conn.isolation_level = None
        dbapi_conn.execute("PRAGMA foreign_keys=ON")

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


@dataclass(frozen=True)
class _Phase:
    name: str = "sqlite"
    shadow: str | None = None


class _Phases:
    def current(self) -> _Phase:
        return _Phase()


class PlainTx:
    """A Core transaction: execute() returns the changed rows' keys, as a DualWriter's does."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def execute(self, stmt: Insert | Update | Delete, params: Any = None) -> list[RowMapping]:
        if params is not None:  # executemany: the workload reads no keys back
            self.conn.execute(stmt, params)
            return []
        keys = stmt.table.primary_key.columns  # type: ignore[attr-defined]
        return list(self.conn.execute(stmt.returning(*keys)).mappings())


class PlainApp:
    """The application's data access without dualwrite."""

    def __init__(self, sqlite_url: str) -> None:
        self.engine = plain_engine(sqlite_url)
        self.phases = _Phases()
        self.reader = None

    @property
    def ledger_engines(self) -> tuple[Engine, ...]:
        return (self.engine,)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with Session(self.engine) as s, s.begin():
            yield s

    @contextmanager
    def begin(self) -> Iterator[PlainTx]:
        with self.engine.begin() as conn:
            yield PlainTx(conn)

    def close(self) -> None:
        self.engine.dispose()
