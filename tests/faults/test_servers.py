"""Server faults during dual writes and backfill: the private Postgres stopped (3), the private Redis
restarted with its stream lost (4), and a TCP fault proxy cutting / stalling connections (5)."""

from __future__ import annotations

import threading
import time

import pytest

from dualwrite.backfill import checkpoint as ckpt
from dualwrite.backfill.copier import Copier
from dualwrite.redis_keys import stream_key
from dualwrite.settings import Settings
from dualwrite.stream.replay import Replayer
from tests.core.support import TABLES
from tests.faults.conftest import (
    SEEDS,
    SEEDS_AND_SOAK,
    SOAK_SEEDS,
    Collector,
    PrivatePostgres,
    PrivateRedis,
    count_rows,
    heal_and_verify,
    wait_for,
)
from tests.faults.proxy import FaultProxy
from tests.faults.workload import running_workload


# -- (3) Postgres stopped during dual writes -----------------------------------------------------------
def _pg_down_dual_writes(fsettings: Settings, pg: PrivatePostgres, collector: Collector, seed: int, steps: int) -> None:
    with running_workload(fsettings, seed, steps) as (dw, wl):
        pg.stop()
        during = wl.run(steps)  # must all succeed: SQLite is the primary
        assert not wl.errors
        pg.start()
        t0 = time.monotonic()
        out = heal_and_verify(dw, TABLES, since=t0)
        wl.run(steps // 2)
        heal_and_verify(dw, TABLES, since=time.monotonic())
        # each fault records its own row through the shared collector.healed: alike in shape, other facts
        collector.healed(
            "Postgres stopped during dual writes",
            out,
            rows_during_fault=during,
            note="writes succeed; replay heals",
        )


@pytest.mark.parametrize("seed", SEEDS)
def test_pg_stopped_during_dual_writes(
    fsettings: Settings, pg: PrivatePostgres, collector: Collector, seed: int
) -> None:
    _pg_down_dual_writes(fsettings, pg, collector, seed, 15)


@pytest.mark.soak
@pytest.mark.parametrize("seed", SOAK_SEEDS)
def test_pg_stopped_during_dual_writes_soak(
    fsettings: Settings, pg: PrivatePostgres, collector: Collector, seed: int
) -> None:
    _pg_down_dual_writes(fsettings, pg, collector, seed, 80)


# -- (3b) Postgres stopped during backfill -------------------------------------------------------------
@pytest.mark.parametrize("seed", SEEDS_AND_SOAK)
def test_pg_stopped_during_backfill(fsettings: Settings, pg: PrivatePostgres, collector: Collector, seed: int) -> None:
    # history on SQLite only: Postgres is empty
    with running_workload(fsettings, seed, 120, phase="sqlite", relay=False) as (dw, wl):
        dw.phases.set("dual_write", force=True, reason="test: backfill under live writes")
        copier = Copier.for_backends(dw.backends, chunk_size=7, max_retries=2)
        copier.copy_tables(list(TABLES), max_chunks=3)
        pg.stop()
        during = wl.run(10)  # live dual writes while Postgres is down: they succeed
        with pytest.raises(Exception) as err:  # noqa: PT011 - a connection error of the driver
            Copier.for_backends(dw.backends, chunk_size=7, max_retries=1)
        assert "connect" in str(err.value).lower() or "server" in str(err.value).lower()
        pg.start()
        t0 = time.monotonic()
        reports = Copier.for_backends(dw.backends, chunk_size=7).copy_tables(list(TABLES))
        assert [r.status for r in reports] == ["done", "done"]
        with dw.backends.postgres.connect() as conn:
            for t in TABLES:
                cp = ckpt.load(conn, t.name)
                assert cp.rows_copied >= count_rows(dw.backends.sqlite_read, t)  # every row counted once per copy
        out = heal_and_verify(dw, TABLES, since=t0)
        # each fault records its own row through the shared collector.healed: alike in shape, other facts
        collector.healed(
            "Postgres stopped during backfill",
            out,
            rows_during_fault=during,
            note="copier resumes from its checkpoint",
        )


# -- (4) Redis restarted: the stream is lost -------------------------------------------------------------
@pytest.mark.parametrize("seed", SEEDS_AND_SOAK)
def test_redis_restarted_stream_lost(
    fsettings: Settings, private_redis: PrivateRedis, collector: Collector, seed: int
) -> None:
    """Redis here keeps nothing on disk, so a restart loses the stream, the consumer group and the phase.

    How it heals: the relay sees the stream key gone (XINFO top = none) and republishes every retained
    outbox row with its original `<seq>-0` id; the replayer's group is recreated by `Replayer.run()`
    (`ensure_group`, XGROUP CREATE ... MKSTREAM at 0) when the worker is restarted, and replays every
    event again; the apply is idempotent (versions in `_dw_versions`), so Postgres ends equal, not doubled.
    The phase is kept by each writer's cache (the last phase seen) and set again here."""
    key = stream_key(fsettings.namespace)
    with running_workload(fsettings, seed, 20) as (dw, wl):
        rp = Replayer(dw.backends, dw.tables, consumer="w1", block_ms=50)
        rp.run(once=True)
        published = dw.backends.redis.xlen(key)
        private_redis.stop()
        during = wl.run(10)
        assert not wl.errors
        private_redis.start()
        t0 = time.monotonic()
        dw.phases.set("dual_write", force=True, reason="test: Redis lost its state")
        # the relay republishes the whole retained outbox into a new stream
        wait_for(
            lambda: dw.backends.redis.exists(key) and dw.backends.redis.xlen(key) >= published,
            20,
            "the relay to republish",
        )
        # a long-running replayer whose group vanished: see the report (NOGROUP); restarting run() recreates it
        Replayer(dw.backends, dw.tables, consumer="w1", block_ms=50).run(once=True)
        out = heal_and_verify(dw, TABLES, since=t0)
        collector.healed(
            "Redis restarted (stream lost)",
            out,
            rows_during_fault=during,
            note="outbox republished; group recreated on worker restart",
        )


def test_replayer_survives_group_loss(fsettings: Settings, private_redis: PrivateRedis) -> None:
    """A replayer loop running across a Redis restart must keep going (recreate its group), not die."""
    with running_workload(fsettings, 7, 5) as (dw, _wl):
        rp = Replayer(dw.backends, dw.tables, consumer="w1", block_ms=50)
        stop = threading.Event()
        died: list[BaseException] = []

        def loop() -> None:
            try:
                rp.run(should_stop=stop.is_set)
            except BaseException as exc:  # noqa: BLE001
                died.append(exc)

        th = threading.Thread(target=loop, daemon=True)
        th.start()
        time.sleep(0.5)
        private_redis.stop()
        time.sleep(0.5)
        private_redis.start()
        time.sleep(2.0)
        stop.set()
        th.join(timeout=10)
        assert not died, f"the replayer loop died: {died[0]!r}"


# -- (5) TCP fault proxy: cut and stalled connections -----------------------------------------------------
def _proxied(
    fsettings: Settings, pg: PrivatePostgres, private_redis: PrivateRedis
) -> tuple[Settings, FaultProxy, FaultProxy]:
    pgp = FaultProxy(pg.port).start()
    rp = FaultProxy(private_redis.port).start()
    s = fsettings.with_(
        postgres_url=f"postgresql://postgres@127.0.0.1:{pgp.port}/postgres",
        redis_url=f"redis://127.0.0.1:{rp.port}/0",
    )
    return s, pgp, rp


@pytest.mark.parametrize("seed", SEEDS_AND_SOAK)
@pytest.mark.parametrize("mode", ["cut", "stall"])
def test_proxy_faults_during_dual_writes(
    fsettings: Settings, pg: PrivatePostgres, private_redis: PrivateRedis, collector: Collector, seed: int, mode: str
) -> None:
    s, pgp, rp = _proxied(fsettings, pg, private_redis)
    try:
        with running_workload(s, seed, 15) as (dw, wl):
            if mode == "cut":
                pgp.cut()
                rp.cut()
                during = wl.run(10)
                assert not wl.errors
                pgp.passthrough()
                rp.passthrough()
            else:
                pgp.stall()
                rp.stall()
                timer = threading.Timer(1.0, lambda: (pgp.passthrough(), rp.passthrough()))
                timer.start()
                t = time.monotonic()
                during = wl.run(5)  # the writes wait for the stall to end, then succeed
                timer.join()
                assert not wl.errors
                assert time.monotonic() - t >= 0.5
            t0 = time.monotonic()
            out = heal_and_verify(dw, TABLES, since=t0)
            collector.healed(
                f"TCP proxy: {mode} Postgres + Redis connections",
                out,
                rows_during_fault=during,
                note="writes succeed; relay + replay heal" if mode == "cut" else "writes wait, then succeed",
            )
    finally:
        pgp.close()
        rp.close()
