"""Bounded state: the stream is trimmed to what every consumer group acknowledged less the retention window
(on Redis 6.2 and 7), published outbox rows are pruned past their age in batches, unpublished never; and a
cutover of many events ends with the stream's length within the window (50k here, 1M in the soak)."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

import pytest
import redis
from sqlalchemy import func, insert, select

from dualwrite import metrics
from dualwrite.bookkeeping import outbox
from dualwrite.events import ChangeEvent
from dualwrite.redis_keys import stream_key
from dualwrite.settings import Settings
from dualwrite.stream.protocol import group_lag, top_seq
from dualwrite.stream.relay import Relay
from dualwrite.stream.replay import DEFAULT_GROUP, Replayer
from dualwrite.stream.retention import StreamTrimmer, prune_outbox
from dualwrite.testing import prepared_writer
from tests.core.support import catalog, items
from tests.servers import PrivateRedis
from tests.stream.test_replay_recovery import any_redis  # noqa: F401 - the fixture (Redis 6.2 and 7)


def _fill(client: redis.Redis, key: str, n: int) -> None:
    pipe = client.pipeline(transaction=False)
    for seq in range(1, n + 1):
        pipe.xadd(key, {"e": b"x"}, id=f"{seq}-0")
    pipe.execute()


def test_trim_keeps_what_any_group_has_not_acknowledged(any_redis: PrivateRedis) -> None:  # noqa: F811
    client = redis.Redis.from_url(any_redis.url)
    key = "trimtest:changes"
    assert StreamTrimmer(client, key, 0).trim().exists is False
    _fill(client, key, 100)
    r = StreamTrimmer(client, key, 0).trim()
    assert (r.minid, r.trimmed, r.length) == (None, 0, 100)  # no group: nothing acknowledged, nothing trimmed
    client.xgroup_create(key, "slow", id="0")
    client.xgroup_create(key, "fast", id="0")
    slow = client.xreadgroup("slow", "c", {key: ">"}, count=60)[0][1]
    client.xack(key, "slow", *[eid for eid, _ in slow[:50]])  # 51..60 delivered, not acknowledged
    fast = client.xreadgroup("fast", "c", {key: ">"}, count=80)[0][1]
    client.xack(key, "fast", *[eid for eid, _ in fast])

    dry = StreamTrimmer(client, key, 10).trim(dry=True)
    assert (dry.minid, dry.trimmed, dry.length) == ("41-0", 0, 100)
    assert dry.groups == {"slow": "51-0", "fast": "80-1"} and dry.held_by == "slow"
    assert client.xlen(key) == 100
    r = StreamTrimmer(client, key, 10).trim()
    assert (r.trimmed, r.length) == (40, 60)
    assert client.xrange(key, count=1)[0][0] == b"41-0"  # 10 acknowledged entries kept below 51
    r = StreamTrimmer(client, key, 0).trim()
    assert (r.minid, r.trimmed, r.length) == ("51-0", 10, 50)
    # the pending entries are still there to re-deliver; acknowledging them lets the next trim go on
    assert [e for e, _ in client.xreadgroup("slow", "c", {key: "0"}, count=100)[0][1]][:1] == [b"51-0"]
    client.xack(key, "slow", *[eid for eid, _ in slow[50:]])
    rest = client.xreadgroup("slow", "c", {key: ">"})[0][1]
    client.xack(key, "slow", *[eid for eid, _ in rest])
    r = StreamTrimmer(client, key, 0).trim()
    assert (r.minid, r.length) == ("80-1", 20)  # now the fast group (at 80) is the slowest
    assert client.xinfo_stream(key)["last-generated-id"] == b"100-0"  # the relay's cursor survives trimming
    client.close()


def test_prune_deletes_published_rows_past_retention_in_batches_never_unpublished(settings: Settings) -> None:
    dw = prepared_writer(settings, catalog(), phase="sqlite")
    try:
        for i in range(10):
            dw.execute(insert(items).values(id=i, name=f"n{i}"))
        relay = Relay.for_backends(dw.backends, retention=timedelta(hours=1))
        assert relay.drain(timeout=30)
        assert relay.prune(relay._top) == 0  # all published, none old enough
        for i in range(10, 15):
            dw.execute(insert(items).values(id=i, name=f"n{i}"))  # committed, not yet published
        top = relay.our_top()
        assert top == 10
        with dw.backends.sqlite.connect() as conn:
            before = metrics.sample("dualwrite_outbox_pruned_total")
            assert prune_outbox(dw.backends.sqlite, top, timedelta(0), batch=3) == 10
            assert metrics.sample("dualwrite_outbox_pruned_total") - before == 10
            left = conn.execute(select(outbox.c.seq).order_by(outbox.c.seq)).scalars().all()
        assert left == [11, 12, 13, 14, 15]
        assert metrics.sample("dualwrite_outbox_rows", {"backend": "sqlite"}) >= 0
        relay.prune(top)
        assert metrics.sample("dualwrite_outbox_rows", {"backend": "sqlite"}) == 5
    finally:
        dw.close()


def test_an_outbox_row_s_created_at_is_what_its_column_type_stores(settings: Settings) -> None:
    """write_outbox writes the SQLite stamp itself (not through the type's processor): the same text, so
    the prune's comparison of created_at with a cutoff (bound through the type) sees the same instant."""
    dw = prepared_writer(settings, catalog(), phase="sqlite")
    try:
        dw.execute(insert(items).values(id=1, name="n"))
        with dw.backends.sqlite.connect() as conn:
            raw = conn.exec_driver_sql("SELECT created_at, payload FROM _dw_outbox").one()
            typed = conn.execute(select(outbox.c.created_at)).scalar_one()
        proc = outbox.c.created_at.type.dialect_impl(conn.dialect).bind_processor(conn.dialect)
        assert proc is not None and raw[0] == proc(typed)
        assert typed == ChangeEvent.from_json(raw[1]).ts  # the event's commit time, to the microsecond
    finally:
        dw.close()


def _cutover(settings: Settings, events: int, retention: int, batch: int, checks: int = 10) -> dict[str, Any]:
    """Dual writes of `events` events while the relay publishes and a replayer applies them, both trimming;
    `checks` times on the way (and at the end) the writes wait until the group caught up and the stream was
    trimmed, and the length is taken then. Returns those lengths, the end's, and the largest seen at all."""
    dw = prepared_writer(settings.with_(stream_retention=retention), catalog(), phase="dual_write")
    key = stream_key(settings.namespace)
    relay = Relay.for_backends(dw.backends, wakeup=dw.committed, batch=2000)
    replayer = Replayer(dw.backends, dw.tables, consumer="soak", batch=1000, block_ms=50)
    replayer.ensure_group()
    stop = threading.Event()
    peak = {"length": 0}
    trimmed_before = metrics.sample("dualwrite_stream_trimmed_total")
    caught_up_lengths: list[int] = []

    def settled_length(written: int) -> int:
        """Wait (generously: a loaded machine) until all `written` events (seqs 1..written) are published
        and acknowledged, asked of Redis now (not the workers' last look), then trim and measure."""
        deadline = time.monotonic() + 300
        client = dw.backends.redis
        while not ((top_seq(client, key) or 0) >= written and group_lag(client, key, DEFAULT_GROUP) == (0, 0)):
            assert time.monotonic() < deadline, (
                f"not caught up after {written}: {group_lag(client, key, DEFAULT_GROUP)}"
            )
            time.sleep(0.05)
        relay.trim()
        return dw.backends.redis.xlen(key)

    def replay() -> None:
        while not stop.is_set():
            replayer.step()

    def watch() -> None:
        while not stop.is_set():
            peak["length"] = max(peak["length"], dw.backends.redis.xlen(key))
            time.sleep(0.05)

    threads = [threading.Thread(target=f, daemon=True) for f in (replay, watch)]
    relay.start()
    for t in threads:
        t.start()
    try:
        written, every = 0, max(batch, events // checks)
        while written < events:
            n = min(batch, events - written)
            dw.execute(insert(items), [{"id": written + i, "name": "x"} for i in range(n)])
            written += n
            if written % every == 0 and written < events:
                caught_up_lengths.append(settled_length(written))
        relay.stop()
        assert relay.drain(timeout=120)
        deadline = time.monotonic() + 300
        while not replayer.caught_up():
            assert time.monotonic() < deadline, f"replay not caught up: {replayer.lag}"
            time.sleep(0.1)
        stop.set()
        for t in threads:
            t.join(timeout=30)
        relay.trim()  # the last trim, after everything was acknowledged
        with dw.backends.sqlite.connect() as conn:
            outbox_left = int(conn.execute(select(func.count()).select_from(outbox)).scalar() or 0)
        return {
            "events": int(dw.backends.redis.xinfo_stream(key)["last-generated-id"].split(b"-")[0]),
            "length": dw.backends.redis.xlen(key),
            "peak": peak["length"],
            "caught_up": caught_up_lengths,
            "trimmed": int(metrics.sample("dualwrite_stream_trimmed_total") - trimmed_before),
            "outbox": outbox_left,
        }
    finally:
        stop.set()
        relay.stop()
        dw.close()


def test_a_cutover_of_50k_events_ends_with_the_stream_within_the_retention_window(settings: Settings) -> None:
    out = _cutover(settings, 50_000, retention=2_000, batch=500)
    print(f"50k cutover: {out}")
    assert out["events"] == 50_000
    assert out["length"] <= 2_000, out  # every group acknowledged everything: only the window is left
    assert out["trimmed"] >= 48_000, out
    # bounded while it ran, not only at the end: each time the group had caught up, only the window was left
    assert len(out["caught_up"]) == 9 and all(n <= 2_000 for n in out["caught_up"]), out
    assert out["outbox"] == 50_000  # the outbox keeps its 24h: a lost stream can be rebuilt from it


@pytest.mark.soak
@pytest.mark.timeout(3600)
def test_soak_a_cutover_of_1m_events_ends_with_the_stream_within_the_retention_window(settings: Settings) -> None:
    out = _cutover(settings, 1_000_000, retention=10_000, batch=1000)
    print(f"1M cutover: {out}")
    assert out["events"] == 1_000_000
    assert out["length"] <= 10_000, out
    assert len(out["caught_up"]) == 9 and all(n <= 10_000 for n in out["caught_up"]), out


def test_status_shows_the_stream_trim_point_and_the_outboxes(settings: Settings) -> None:
    from click.testing import CliRunner

    from dualwrite.cli.main import main
    from tests.conftest import connection_args

    dw = prepared_writer(settings, catalog(), phase="dual_write")
    try:
        for i in range(30):
            dw.execute(insert(items).values(id=i, name=f"n{i}"))
        assert Relay.for_backends(dw.backends, trim_every=3600).drain(timeout=30)
        args = [*connection_args(settings), "--stream-retention", "5"]
        out = CliRunner().invoke(main, ["status", *args]).output
        assert "stream: 30 entries, not trimmed (no consumer group has read it)" in out, out
        assert "outbox sqlite: 30 rows" in out and "(published rows kept 1d)" in out, out
        assert "outbox postgres: 0 rows (published rows kept 1d)" in out, out  # the primary's holds them
        replayer = Replayer(dw.backends, dw.tables, consumer="c", block_ms=10)
        replayer.ensure_group()
        replayer.run(once=True)
        out = CliRunner().invoke(main, ["status", *args]).output
        # the replayer trimmed with the settings' window (10,000): all 30 are left; status shows what 5 would do
        assert "stream: 30 entries, trim point 26-0 (group backfill needs 30-1 on; 5 acknowledged" in out, out
        env = CliRunner().invoke(main, ["status", *connection_args(settings)], env={"DUALWRITE_STREAM_RETENTION": "7"})
        assert "trim point 24-0" in env.output, env.output  # the variable, when no flag is given
        bad = CliRunner().invoke(main, ["status", *connection_args(settings), "--stream-retention", "-1"])
        assert bad.exit_code == 2 and "--stream-retention: -1 is below 0" in bad.output, bad.output
        out = CliRunner().invoke(main, ["status", *connection_args(settings), "--outbox-retention", "90m"]).output
        assert "outbox sqlite: 30 rows" in out and "(published rows kept 90m)" in out, out
        bad = CliRunner().invoke(main, ["status", *connection_args(settings), "--outbox-retention", "soon"])
        assert bad.exit_code == 2 and "--outbox-retention: 'soon' is not a duration" in bad.output, bad.output
    finally:
        dw.close()
