"""Throttling the copy: live limits from `dualwrite backfill set`, and the automatic back-off."""

from __future__ import annotations

import json
import threading
import time

import pytest
import redis
from click.testing import CliRunner

from dualwrite import metrics
from dualwrite.backfill.copier import Copier
from dualwrite.backfill.leases import LeaseBook
from dualwrite.backfill.throttle import Limits, Throttler, live_workers, over_limits, probe_replication_lag_s
from dualwrite.cli.main import main
from tests.backfill.support import META, accounts, seed
from tests.conftest import connection_args

PHASE = "dual_write"  # the conftest's dw fixture


def cli_set(settings, *args: str) -> str:  # type: ignore[no-untyped-def]
    r = CliRunner().invoke(main, ["backfill", "set", *connection_args(settings), *args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r.output


def throttled_copier(dw, settings, limits: Limits, sizes: list[int]) -> tuple[Copier, Throttler]:  # type: ignore[no-untyped-def]
    last = [0]

    def progress(_table: str, done: int, _expected: int) -> None:
        sizes.append(done - last[0])
        last[0] = done

    copier = Copier.for_backends(dw.backends, chunk_size=limits.chunk_size or 10)
    copier.leases = LeaseBook(dw.backends.postgres, progress=progress)
    copier.throttle = Throttler(
        limits,
        client=redis.Redis.from_url(settings.redis_url),
        namespace=settings.namespace,
        probe_engine=dw.backends.postgres,
        name="t1",
        refresh_s=0.1,
        probe_interval_s=0.05,
        on_chunk_size=lambda n: setattr(copier, "chunk_size", n),
    )
    return copier, copier.throttle


def test_rate_and_chunk_size_change_while_it_runs(dw, settings) -> None:  # type: ignore[no-untyped-def]
    seed(dw, 1000)
    sizes: list[int] = []
    copier, throttle = throttled_copier(dw, settings, Limits(max_rows_per_second=100, chunk_size=10), sizes)
    t = threading.Thread(target=copier.copy_tables, args=([accounts],))
    t0 = time.monotonic()
    t.start()
    time.sleep(1.0)
    assert t.is_alive() and 50 <= sum(sizes) <= 300  # ~100 rows/s in chunks of 10
    assert set(sizes) == {10}
    out = cli_set(settings, "--max-rows-per-second", "1000000", "--chunk-size", "250")
    assert "chunk_size=250" in out and "max_rows_per_second=1000000" in out
    t.join(timeout=30)
    assert not t.is_alive()
    assert time.monotonic() - t0 < 8  # at 100 rows/s the 1000 rows would have needed 10 s
    assert 250 in sizes and sum(sizes) == 1000  # larger chunks after the change, every row once
    assert copier.chunk_size == 250
    assert metrics.sample("dualwrite_backfill_chunk_rows") == 250
    assert metrics.sample("dualwrite_backfill_rate_limit_rows_per_second") == 1_000_000
    assert_equal_accounts(dw)
    throttle.close()
    copier.leases.close()


def test_backs_off_on_pg_latency_and_recovers(dw, settings) -> None:  # type: ignore[no-untyped-def]
    seed(dw, 300)
    sizes: list[int] = []
    copier, throttle = throttled_copier(dw, settings, Limits(chunk_size=50, max_pg_latency_ms=0), sizes)
    client = redis.Redis.from_url(settings.redis_url)
    t = threading.Thread(target=copier.copy_tables, args=([accounts],))
    t.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and throttle.reason is None:
        time.sleep(0.02)
    assert throttle.reason == "pg_latency"  # every probe takes > 0 ms
    time.sleep(0.5)
    held = sum(sizes)
    assert held == 50  # one chunk, then held back
    assert metrics.sample("dualwrite_throttle_active", {"reason": "pg_latency"}) == 1
    (state,) = live_workers(client, settings.namespace)
    assert state["throttle"] == "pg_latency" and state["limits"]["max_pg_latency_ms"] == 0
    r = CliRunner().invoke(main, ["backfill", "status", *connection_args(settings), *META])
    assert r.exit_code == 0 and "pg_latency" in r.output, r.output  # visible in status too
    cli_set(settings, "--max-pg-latency-ms", "10000")  # raise the threshold: it recovers
    t.join(timeout=30)
    assert not t.is_alive() and sum(sizes) == 300
    assert throttle.reason is None
    assert metrics.sample("dualwrite_throttle_active", {"reason": "pg_latency"}) == 0
    assert_equal_accounts(dw)
    throttle.close()
    assert live_workers(client, settings.namespace) == []
    copier.leases.close()


def test_pause_and_resume(dw, settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    seed(dw, 100)
    sizes: list[int] = []
    copier, throttle = throttled_copier(dw, settings, Limits(chunk_size=20), sizes)
    cli_set(settings, "--pause")
    t = threading.Thread(target=copier.copy_tables, args=([accounts],))
    t.start()
    time.sleep(0.6)
    assert throttle.reason == "paused" and sum(sizes) == 20
    report = tmp_path / "status.json"
    r = CliRunner().invoke(main, ["backfill", "status", *connection_args(settings), *META, "--report", str(report)])
    assert "worker t1: starting, throttled: paused" in r.output, r.output
    (row,) = [t for t in json.loads(report.read_text())["tables"] if t["table"] == "bf_accounts"]
    assert (row["state"], row["done"], row["total"], row["percent"]) == ("copying", 20, 100, 20.0)
    assert row["rows_per_second"] > 0 and row["eta_seconds"] == pytest.approx(80 / row["rows_per_second"])
    cli_set(settings, "--resume")
    t.join(timeout=30)
    assert sum(sizes) == 100 and throttle.reason is None
    assert "live limits: none" in cli_set(settings, "--clear")
    throttle.close()
    copier.leases.close()


def test_back_off_decision_and_lag_probe(dw) -> None:  # type: ignore[no-untyped-def]
    lim = Limits(max_pg_latency_ms=5, max_replication_lag_s=2)
    assert over_limits(lim, 1.0, 0.0) is None
    assert over_limits(lim, 6.0, 0.0) == "pg_latency"
    assert over_limits(lim, 1.0, 3.0) == "replication_lag"
    assert over_limits(Limits(paused=True), None, None) == "paused"
    assert over_limits(Limits(), 1e9, 1e9) is None  # no thresholds, no back-off
    assert probe_replication_lag_s(dw.backends.postgres) == 0.0  # the test server has no replicas
    # A live value overrides the worker's own; 0 removes a rate limit but is a real threshold.
    got = Limits(max_rows_per_second=5, chunk_size=7).with_overrides(
        {"max_rows_per_second": "0", "max_pg_latency_ms": "0", "chunk_size": "x"}
    )
    assert got == Limits(max_rows_per_second=None, chunk_size=7, max_pg_latency_ms=0.0)


def assert_equal_accounts(dw) -> None:  # type: ignore[no-untyped-def]
    from tests.backfill.support import snapshot

    assert snapshot(dw.backends.sqlite_read, accounts) == snapshot(dw.backends.postgres, accounts)

