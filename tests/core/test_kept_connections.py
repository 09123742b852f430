"""The inline apply's kept Postgres connections (kept_connections.py), on the real server: one session
serves a writer's writes, the pool's bounds still hold, a lost session is never kept, a forked child never
touches the parent's sessions, and nothing stays checked out after close or a dispose."""

from __future__ import annotations

import os
import threading

from sqlalchemy import insert, text

from dualwrite.engines import Backends
from dualwrite.kept_connections import KeptConnections
from dualwrite.settings import Settings
from dualwrite.testing import prepared_writer
from tests.core.support import catalog, items, row, snapshot


def _pid(raw) -> int:  # type: ignore[no-untyped-def]
    cur = raw.cursor()
    cur.execute("SELECT pg_backend_pid()")
    (pid,) = cur.fetchone()
    cur.close()
    return int(pid)


def test_a_writer_s_writes_share_one_kept_session(settings: Settings) -> None:
    dw = prepared_writer(settings, catalog(), phase="dual_write")
    try:
        kept, pool = dw.backends.direct_kept, dw.backends.postgres_direct.pool
        for i in range(1, 6):
            dw.execute(insert(items).values(row(i, i)))
        assert len(kept._idle) == 1 and pool.checkedout() == 1  # noqa: SLF001 - one session, kept idle
        assert [r[0] for r in snapshot(dw.backends.postgres)] == [1, 2, 3, 4, 5]
    finally:
        dw.close()
    assert pool.checkedout() == 0  # close() gave it back before the engine was disposed


def test_concurrent_writers_keep_at_most_pool_size_within_the_pool_s_bounds(settings: Settings) -> None:
    dw = prepared_writer(settings.with_(pool_size=2, max_overflow=1), catalog(), phase="dual_write")
    try:
        kept, pool = dw.backends.direct_kept, dw.backends.postgres_direct.pool
        seen: list[int] = []

        def write(t: int) -> None:
            for i in range(20):
                dw.execute(insert(items).values(row(1000 * t + i, i)))
                seen.append(pool.checkedout())

        threads = [threading.Thread(target=write, args=(t,)) for t in range(1, 6)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert max(seen) <= 3  # pool_size + max_overflow, as without kept connections
        assert len(kept._idle) <= 2 and pool.checkedout() == len(kept._idle)  # noqa: SLF001
        assert len(snapshot(dw.backends.postgres)) == 100
    finally:
        dw.close()


def test_a_lost_kept_session_is_dropped_and_the_write_still_reaches_postgres(settings: Settings) -> None:
    dw = prepared_writer(settings, catalog(), phase="dual_write")
    try:
        kept = dw.backends.direct_kept
        dw.execute(insert(items).values(row(1, 1)))
        (raw,) = kept._idle  # noqa: SLF001
        dead = _pid(raw)
        with dw.backends.postgres.connect() as other:
            other.execute(text("SELECT pg_terminate_backend(:p)"), {"p": dead})
            other.commit()
        dw.execute(insert(items).values(row(2, 2)))  # the lost session fails the first try; the retry lands
        assert [r[0] for r in snapshot(dw.backends.postgres)] == [1, 2]
        assert len(kept._idle) == 1 and _pid(kept._idle[0]) != dead  # noqa: SLF001
    finally:
        dw.close()


def test_a_forked_child_opens_its_own_and_leaves_the_parent_s_alone(settings: Settings) -> None:
    with Backends(settings) as backends:
        kept = KeptConnections(backends.postgres_direct, keep=2)
        raw = kept.take()
        parent = _pid(raw)
        kept.give(raw)
        read, write = os.pipe()
        child = os.fork()
        if child == 0:  # pragma: no cover - the child reports and exits at once
            code = 1
            try:
                mine = kept.take()
                os.write(write, str(_pid(mine)).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(write)
        got = os.read(read, 64)
        os.close(read)
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert int(got) != parent  # the child had its own session
        raw = kept.take()
        assert _pid(raw) == parent  # the parent's kept session is alive and still its own
        kept.give(raw)
        kept.close()


def test_after_a_dispose_only_the_new_pool_s_connections_are_taken(settings: Settings) -> None:
    with Backends(settings) as backends:
        engine = backends.postgres_direct
        kept = KeptConnections(engine, keep=2)
        raw = kept.take()
        old = _pid(raw)
        kept.give(raw)
        engine.dispose()
        raw = kept.take()
        assert raw.is_valid and _pid(raw) != old
        kept.give(raw)
        assert len(kept._idle) == 1  # noqa: SLF001
        kept.close()
        assert engine.pool.checkedout() == 0
        raw = kept.take()  # after close: still usable, but nothing is kept any more
        kept.give(raw)
        assert not kept._idle and engine.pool.checkedout() == 0  # noqa: SLF001
