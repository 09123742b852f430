"""A small table set for the backfill tests (int pk, composite text+int pk, and a child with a FK), the
chunk tests' accounts helpers, `Race`: two transactions on one key, the second blocked on the first, and the
`dualwrite backfill` command in-process (`invoke`) or as a child process (`spawn`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from click.testing import CliRunner, Result
from sqlalchemy import (
    Column,
    Engine,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    insert,
    select,
    text,
)
from sqlalchemy import delete as delete_rows

from dualwrite.adapter import DualWriter
from dualwrite.events import ChangeEvent
from dualwrite.redis_keys import stream_key
from dualwrite.stream.relay import Relay
from dualwrite.tables import Tables
from dualwrite.types import JSONType, UTCDateTime

md = MetaData()
# this module's own tables: shaped like other suites' Table declarations; other names and types on purpose
accounts = Table(
    "bf_accounts",
    md,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("name", Text),
    Column("doc", JSONType),
    Column("blob", LargeBinary),
    Column("at", UTCDateTime),
)
tags = Table(
    "bf_tags",
    md,
    Column("tenant", String(20), primary_key=True),
    Column("n", Integer, primary_key=True, autoincrement=False),
    Column("label", Text),
)
notes = Table(
    "bf_notes",
    md,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("account_id", Integer, ForeignKey("bf_accounts.id")),
    Column("body", Text),
)
TABLES = [accounts, tags, notes]  # parents first
META = ["--metadata", "tests.backfill.support:md"]  # these tables, for the `dualwrite` commands
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def catalog() -> Tables:
    return Tables.of(TABLES, store="bf")


def account_row(i: int, name: str | None = None) -> dict[str, Any]:
    return {
        "id": i,
        "name": name or f"acct-{i} é",
        "doc": {"i": i, "tags": ["a", "b"]},
        "blob": bytes([i % 256, 0, 255]),
        "at": T0 + timedelta(seconds=i, microseconds=i),
    }


def seed(dw: DualWriter, n: int) -> None:
    """Rows that existed before capture began: written to SQLite directly (no events)."""
    with dw.backends.sqlite.begin() as conn:
        conn.execute(insert(accounts), [account_row(i) for i in range(1, n + 1)])
        conn.execute(insert(tags), [{"tenant": f"t{i % 7}", "n": i, "label": f"label {i}"} for i in range(1, n + 1)])
        conn.execute(insert(notes), [{"id": i, "account_id": 1 + i % n, "body": f"note {i}"} for i in range(1, n + 1)])


def snapshot(engine: Any, table: Table) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        rows = [tuple(r) for r in conn.execute(select(table).order_by(*table.primary_key.columns)).all()]
        conn.rollback()
    return rows


def assert_equal(dw: DualWriter) -> None:
    for t in TABLES:
        left, right = snapshot(dw.backends.sqlite_read, t), snapshot(dw.backends.postgres, t)
        assert len(left) == len(right), t.name
        assert left == right, t.name


def drain_relay(dw: DualWriter) -> None:
    assert Relay.for_backends(dw.backends).drain(timeout=30)


def clear(dw: DualWriter) -> None:
    """Empty accounts, versions (and Postgres' range versions), outbox and stream on both sides, between
    hypothesis examples."""
    for engine in (dw.backends.sqlite, dw.backends.postgres):
        with engine.begin() as conn:
            conn.execute(delete_rows(accounts))
            conn.execute(text("DELETE FROM _dw_versions"))
            conn.execute(text("DELETE FROM _dw_outbox"))
            if engine.dialect.name == "postgresql":
                conn.execute(text("DELETE FROM _dw_ranges"))
    dw.backends.redis.delete(stream_key(dw.settings.namespace))


# -- the chunk tests' accounts: SQLite seeded at a version S, events, what Postgres holds -------------------
def seed_sqlite(dw: DualWriter, n: int, version: int = 100) -> None:
    """n accounts in SQLite and last_seq = version (the chunk's S)."""
    with dw.backends.sqlite.begin() as conn:
        conn.execute(insert(accounts), [account_row(i) for i in range(1, n + 1)])
        conn.execute(text("UPDATE _dw_meta SET value = :v WHERE name = 'last_seq'"), {"v": version})


def upsert(i: int, seq: int, name: str) -> ChangeEvent:
    return ChangeEvent("bf_accounts", "upsert", {"id": i}, account_row(i, name), seq=seq)


def delete(i: int, seq: int) -> ChangeEvent:
    return ChangeEvent("bf_accounts", "delete", {"id": i}, None, seq=seq)


def versions(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT pk, seq FROM _dw_versions WHERE tbl = 'bf_accounts'")).all()
        conn.rollback()
    return {k: s for k, s in rows}


def names(engine: Engine) -> dict[int, str]:
    with engine.connect() as conn:
        rows = conn.execute(select(accounts.c.id, accounts.c.name)).all()
        conn.rollback()
    return dict(rows)  # type: ignore[arg-type]


# -- races: two transactions on one key, each order -----------------------------------------------------
def pid(conn: Any) -> int:
    return int(conn.connection.driver_connection.info.backend_pid)


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """`fn` started in a thread; the list gets its result, or the exception it raised."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:  # noqa: BLE001 - checked by the test
            out.append(exc)

    th = threading.Thread(target=run)
    th.start()
    return th, out


@dataclass
class Race:
    """The first transaction calls `hold()` inside itself (it stays open, uncommitted); the second calls
    `waiting(conn)` before its statement, which must then wait on the first's lock. `run` starts them in
    that order and commits the first once Postgres shows the second waiting."""

    held: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    pids: list[int] = field(default_factory=list)

    def hold(self) -> None:
        self.held.set()
        self.release.wait(10)

    def waiting(self, conn: Any) -> None:
        self.pids.append(pid(conn))

    def run(self, dw: DualWriter, first: Callable[[], Any], second: Callable[[], Any]) -> tuple[list[Any], list[Any]]:
        """The outputs of `first` and `second` (each a one-item list: its result or its exception)."""
        first_th, first_out = in_thread(first)
        assert self.held.wait(10)
        second_th, second_out = in_thread(second)
        self.wait_until_blocked(dw)
        self.release.set()
        first_th.join(10)
        second_th.join(10)
        return first_out, second_out

    def wait_until_blocked(self, dw: DualWriter, timeout: float = 10.0) -> None:
        """Until the second session waits on a lock (the other transaction's unique-index entry)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.pids:
                with dw.backends.postgres.connect() as conn:
                    waiting = conn.execute(
                        text("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = :p"),
                        {"p": self.pids[-1]},
                    ).scalar()
                    conn.rollback()
                if waiting:
                    return
            time.sleep(0.02)
        raise AssertionError("the second transaction never waited on the first")


# -- the `dualwrite backfill` command ----------------------------------------------------------------------
def invoke(*args: str) -> Result:
    """`dualwrite ARGS` in this process (exceptions raised, not caught)."""
    from dualwrite.cli.main import main  # here, not at the top: a `backfill run` child imports this module

    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def spawn(settings: Any, *args: str, **kw: Any) -> subprocess.Popen:  # type: ignore[type-arg]
    """`dualwrite backfill run` on these settings and tables as a child process (this checkout importable),
    its output piped as text unless `kw` says otherwise."""
    from tests.conftest import connection_args  # not at import: the child's own import must not run conftest

    env = dict(os.environ, PYTHONPATH=os.getcwd())
    return subprocess.Popen(
        [sys.executable, "-m", "dualwrite", "backfill", "run", *connection_args(settings), *META, *args],
        env=env, **({"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True} | kw),
    )  # fmt: skip


def sigterm(proc: subprocess.Popen, timeout: float) -> Any:  # type: ignore[type-arg]
    """Stop a worker process as an operator would (SIGTERM) and wait for it; its whole output (text or
    bytes, as the process was opened)."""
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=timeout)
    return out


def get(url: str) -> tuple[int, str]:
    """A worker's /metrics or /health: status and body."""
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
