"""Replay through a consumer group on the real Redis and Postgres."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import delete, insert, select, update

from dualwrite.events import ChangeEvent
from dualwrite.redis_keys import dead_letter_key, stream_key
from dualwrite.stream.replay import Replayer, list_dead_letters, redrive
from dualwrite.testing import prepared_writer
from tests.backfill.support import TABLES, accounts, assert_equal, catalog, drain_relay, notes, seed, tags


@pytest.fixture
def dw(settings):  # type: ignore[no-untyped-def]
    # Phase sqlite: nothing is applied inline, so Postgres only gets what the replay applies.
    w = prepared_writer(settings, catalog(), phase="sqlite")
    yield w
    w.close()


def write_history(dw, n: int) -> int:  # type: ignore[no-untyped-def]
    """Writes through the DualWriter (events in the outbox); returns the number of events."""
    for i in range(1, n + 1):
        dw.execute(insert(accounts).values(id=i, name=f"a{i}"))
        dw.execute(insert(tags).values(tenant=f"t{i % 3}", n=i, label="x"))
        dw.execute(insert(notes).values(id=i, account_id=i, body="n"))
    for i in range(1, n + 1, 3):
        dw.execute(update(accounts).where(accounts.c.id == i).values(name=f"u{i}"))
    for i in range(2, n + 1, 4):
        dw.execute(delete(notes).where(notes.c.id == i))
        dw.execute(delete(tags).where(tags.c.n == i))
    drain_relay(dw)
    return dw.backends.redis.xlen(stream_key(dw.settings.namespace))


def test_replay_applies_stream_once_in_effect(dw) -> None:  # type: ignore[no-untyped-def]
    total = write_history(dw, 60)
    r = Replayer(dw.backends, dw.tables, consumer="one", batch=37, block_ms=50)
    stats = r.run(once=True)
    assert stats.applied + stats.stale == total and stats.dead == 0
    assert_equal(dw)
    # Replaying everything again (a new group from id 0) changes nothing.
    again = Replayer(dw.backends, dw.tables, group="second", consumer="x", batch=100, block_ms=50).run(once=True)
    assert again.applied == 0 and again.stale == total
    assert_equal(dw)


def test_garbage_entry_goes_to_dead_letters_and_redrive(dw) -> None:  # type: ignore[no-untyped-def]
    total = write_history(dw, 10)
    key = stream_key(dw.settings.namespace)
    dw.backends.redis.xadd(key, {"e": b"{not json"})
    dw.backends.redis.xadd(key, {"x": b"no event field"})
    # An event for a table this catalog does not know: fails to apply, dead-lettered, refused on redrive.
    stranger = ChangeEvent(table="nope", op="upsert", key={"id": 1}, image={"id": 1}, seq=10_000)
    dw.backends.redis.xadd(key, {"e": stranger.to_json()})
    r = Replayer(dw.backends, dw.tables, consumer="one", block_ms=50)
    stats = r.run(once=True)
    assert stats.dead == 3 and stats.applied + stats.stale == total
    assert_equal(dw)
    dead = list_dead_letters(dw.backends.redis, dw.settings.namespace)
    assert {d["reason"] for d in dead} == {"decode", "unknown_table"}
    assert all(d["id"] and "error" in d for d in dead)
    assert r.update_lag()[1] == 0

    # A poison event that fails on Postgres (NUL byte) until "fixed": re-driven directly, then deleted.
    bad = ChangeEvent(table="bf_accounts", op="upsert", key={"id": 999}, image={"id": 999, "name": "a\x00b"}, seq=1)
    dw.backends.redis.xadd(key, {"e": bad.to_json()})
    assert Replayer(dw.backends, dw.tables, consumer="one", block_ms=50).run(once=True).dead == 1
    dl = dead_letter_key(dw.settings.namespace)
    assert dw.backends.redis.xlen(dl) == 4
    assert redrive(dw.backends, dw.tables) == {"applied": 0, "refused": 3, "failed": 1}
    fixed = ChangeEvent(table="bf_accounts", op="upsert", key={"id": 999}, image={"id": 999, "name": "ab"}, seq=1)
    eid = dw.backends.redis.xrange(dl)[-1][0]
    dw.backends.redis.xadd(dl, {"id": b"manual", "payload": fixed.to_json(), "error": "", "reason": "apply"})
    dw.backends.redis.xdel(dl, eid)
    assert redrive(dw.backends, dw.tables) == {"applied": 1, "refused": 3, "failed": 0}
    with dw.backends.postgres.connect() as conn:
        assert conn.execute(select(accounts.c.name).where(accounts.c.id == 999)).scalar() == "ab"


def test_two_consumers_share_the_group(dw) -> None:  # type: ignore[no-untyped-def]
    total = write_history(dw, 80)
    a = Replayer(dw.backends, dw.tables, consumer="a", batch=7, block_ms=50)
    b = Replayer(dw.backends, dw.tables, consumer="b", batch=11, block_ms=50)
    a.ensure_group()
    threads = [threading.Thread(target=r.run, kwargs={"once": True}) for r in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    processed = a.stats.applied + a.stats.stale + b.stats.applied + b.stats.stale
    assert processed == total  # every entry delivered to exactly one consumer
    assert a.stats.batches > 0 and b.stats.batches > 0
    assert_equal(dw)


def test_dead_consumer_entries_are_claimed(dw) -> None:  # type: ignore[no-untyped-def]
    total = write_history(dw, 5)
    key = stream_key(dw.settings.namespace)
    dead = Replayer(dw.backends, dw.tables, consumer="dead", block_ms=50)
    dead.ensure_group()
    dw.backends.redis.xreadgroup(dead.group, "dead", {key: ">"}, count=total)  # read, never acked
    alive = Replayer(dw.backends, dw.tables, consumer="alive", block_ms=50, claim_idle_ms=0)
    stats = alive.run(once=True)
    assert stats.applied + stats.stale == total
    assert alive.update_lag()[1] == 0
    assert_equal(dw)


def test_copy_then_replay_end_to_end(dw) -> None:  # type: ignore[no-untyped-def]
    from dualwrite.backfill.copier import Copier

    seed(dw, 50)  # history from before capture (no events)
    Replayer(dw.backends, dw.tables, consumer="c").ensure_group()
    dw.execute(update(accounts).where(accounts.c.id == 5).values(name="after"))
    dw.execute(delete(notes).where(notes.c.id == 6))
    Copier.for_backends(dw.backends, chunk_size=16).copy_tables(TABLES)
    drain_relay(dw)
    Replayer(dw.backends, dw.tables, consumer="c", block_ms=50).run(once=True)
    assert_equal(dw)


def _acked_ids(dw, group: str) -> set[int]:  # type: ignore[no-untyped-def]
    """Account ids of the entries the group delivered and had acknowledged."""
    client, key = dw.backends.redis, stream_key(dw.settings.namespace)
    (info,) = [g for g in client.xinfo_groups(key) if g["name"] == group.encode()]
    pending = {p["message_id"] for p in client.xpending_range(key, group, "-", "+", 10_000)}
    delivered = client.xrange(key, "-", info["last-delivered-id"])
    return {ChangeEvent.from_json(f[b"e"]).key["id"] for eid, f in delivered if eid not in pending}


def test_acks_follow_commits_and_ride_on_the_next_read(dw) -> None:  # type: ignore[no-untyped-def]
    """run() acks a batch with the next read-ahead (one round trip): never before its commit, and at the
    latest one batch later; a worker dying mid-run leaves the rest pending, re-delivered to its restart."""
    for i in range(1, 121):
        dw.execute(insert(accounts).values(id=i, name=f"a{i}"))
    drain_relay(dw)
    rp = Replayer(dw.backends, dw.tables, consumer="one", batch=10, block_ms=50)
    rp.ensure_group()
    apply, calls = rp._apply, []

    def checked_apply(events: list[ChangeEvent]) -> None:
        acked = _acked_ids(dw, rp.group)
        with dw.backends.postgres.connect() as conn:
            landed = set(conn.execute(select(accounts.c.id)).scalars())
        assert acked <= landed  # acked only once committed
        calls.append(len(acked))
        assert len(acked) >= 10 * (len(calls) - 2)  # the batch before the previous one is acked by now
        if len(calls) == 7:
            raise RuntimeError("the worker dies")
        apply(events)

    rp._apply = checked_apply  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        rp.run()
    acked = _acked_ids(dw, rp.group)
    with dw.backends.postgres.connect() as conn:
        assert acked <= set(conn.execute(select(accounts.c.id)).scalars())
    assert len(acked) == 60  # the six committed batches, the last one acked as run() ended
    restarted = Replayer(dw.backends, dw.tables, consumer="one", batch=10, block_ms=50)
    stats = restarted.run(once=True)
    assert stats.applied == 60 and restarted.lag == (0, 0)
    assert_equal(dw)


def test_undecodable_entries_read_ahead_are_dead_lettered(dw) -> None:  # type: ignore[no-untyped-def]
    """Small batches: the entries after the first batch are read and decoded ahead, in run()'s helper thread;
    one that does not decode is still dead-lettered (and acked) by the replaying thread."""
    total = write_history(dw, 10)
    key = stream_key(dw.settings.namespace)
    for body in (b"{not json", b"[]"):  # after `total` entries: in a batch read ahead when total >= 5
        dw.backends.redis.xadd(key, {"e": body})
    r = Replayer(dw.backends, dw.tables, consumer="one", batch=5, block_ms=50)
    stats = r.run(once=True)
    assert total >= 5 and stats.dead == 2 and stats.applied + stats.stale == total
    assert {d["reason"] for d in list_dead_letters(dw.backends.redis, dw.settings.namespace)} == {"decode"}
    assert r.lag == (0, 0)
    assert_equal(dw)
