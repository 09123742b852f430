"""Every retry goes through dualwrite.retry (tenacity, one policy per kind of failure): no module keeps a
loop of its own, and the policies classify real Postgres and Redis failures as they should."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import redis
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError

from dualwrite import retry
from dualwrite.settings import Settings

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
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)

    def on_retry(exc: BaseException, seconds: float) -> None:
        assert isinstance(exc, redis.ConnectionError)
        waits.append(seconds)

    with pytest.raises(redis.ConnectionError):
        retry.outage(lambda: len(waits) >= 3, on_retry)(dead.ping)
    assert waits[:3] == [0.1, 0.2, 0.4]
