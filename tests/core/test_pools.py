"""Configurable Postgres pools (Settings.pool_size / max_overflow / pool_pre_ping), applied by Backends to
each of its three Postgres engines, on the real server."""

from __future__ import annotations

import threading

import pytest
from click.testing import CliRunner
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from dualwrite.cli import main
from dualwrite.engines import Backends
from tests.conftest import connection_args


def _backend_pid(conn) -> int:  # type: ignore[no-untyped-def]
    return int(conn.execute(text("SELECT pg_backend_pid()")).scalar())


def test_each_engine_holds_at_most_pool_size_plus_overflow(settings) -> None:  # type: ignore[no-untyped-def]
    with Backends(settings.with_(pool_size=2, max_overflow=1)) as backends:
        for engine in (backends.postgres, backends.postgres_apply, backends.postgres_direct):
            held = [engine.connect() for _ in range(3)]  # 2 kept + 1 overflow
            pids = {_backend_pid(c) for c in held}
            assert len(pids) == 3
            got: list[object] = []
            waiter = threading.Thread(target=lambda e=engine, out=got: out.append(e.connect()), daemon=True)
            waiter.start()
            waiter.join(0.5)
            assert not got, "a fourth connection was opened beyond pool_size + max_overflow"
            held.pop().close()  # one back: the waiter gets it
            waiter.join(5)
            assert len(got) == 1
            for c in [*held, *got]:
                c.close()  # type: ignore[attr-defined]
            assert engine.pool.checkedin() <= 2 + 1


def _kill_pooled_connection(backends: Backends) -> None:
    """Terminate the server side of the one connection in backends.postgres' pool."""
    with backends.postgres.connect() as conn:
        pid = _backend_pid(conn)
    with backends.postgres_apply.connect() as other:
        other.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        other.commit()


def test_pre_ping_hides_a_dead_pooled_connection_and_can_be_turned_off(settings) -> None:  # type: ignore[no-untyped-def]
    with Backends(settings.with_(pool_size=1, max_overflow=0)) as backends:
        _kill_pooled_connection(backends)
        with backends.postgres.connect() as conn:  # pinged, found dead, replaced: no error
            assert conn.execute(text("SELECT 1")).scalar() == 1
    with Backends(settings.with_(pool_size=1, max_overflow=0, pool_pre_ping=False)) as backends:
        _kill_pooled_connection(backends)
        with pytest.raises(DBAPIError), backends.postgres.connect() as conn:
            conn.execute(text("SELECT 1"))


def test_pool_flags_on_the_command_line(settings) -> None:  # type: ignore[no-untyped-def]
    r = CliRunner().invoke(main, ["doctor", *connection_args(settings), "--pool-size", "0"])
    assert r.exit_code == 2 and r.output.strip() == "error: --pool-size: 0 is below 1", r.output
    r = CliRunner().invoke(main, ["doctor", *connection_args(settings), "--pool-size", "2", "--no-pool-pre-ping"])
    assert r.exit_code in (0, 1) and "postgres" in r.output, r.output  # accepted (doctor's own verdict aside)
