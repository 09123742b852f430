"""The relay's cursor is its own newest entry in the stream: foreign entries on top of the stream (auto ids,
odd sequence parts, look-alike ids with other payloads) are moved aside, never taken for published events."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from sqlalchemy import insert

from dualwrite.adapter import DualWriter
from dualwrite.events import ChangeEvent
from dualwrite.redis_keys import stream_key
from dualwrite.settings import Settings
from dualwrite.stream.relay import Relay, foreign_key
from dualwrite.testing import prepared_writer
from tests.core.support import catalog, items, row


@pytest.fixture
def dw(settings: Settings) -> Iterator[DualWriter]:
    w = prepared_writer(settings, catalog(), phase="dual_write")
    yield w
    w.close()


def ours(client: redis.Redis, key: str) -> list[int]:
    out = []
    for eid, fields in client.xrange(key):
        ev = ChangeEvent.from_json(fields[b"e"])
        assert eid.decode() == f"{ev.seq}-0"
        out.append(ev.seq)
    return out


@pytest.mark.parametrize(
    "foreign_id",
    ["*", "2-1", "999999-0"],  # an auto id (ms timestamp), our next seq with a non-zero part, a look-alike id
)
def test_foreign_entries_on_top_are_moved_and_nothing_is_skipped(
    dw: DualWriter, rclient: redis.Redis, settings: Settings, foreign_id: str
) -> None:
    key = stream_key(settings.namespace)
    dw.execute(insert(items).values(row(1, 1)))
    relay = Relay.for_backends(dw.backends)
    assert relay.drain(timeout=10)
    # a consumer group that reads the foreign entry before the relay sees it
    rclient.xgroup_create(key, "g", id="0")
    dw.execute(insert(items).values(row(2, 2)))  # seq 2, not yet published
    fid = rclient.xadd(key, {"e": b'{"v": 1, "seq": 5}'}, id=foreign_id)
    first = rclient.xreadgroup("g", "c", {key: ">"})
    assert [e for e, _ in first[0][1]] == [b"1-0", fid]

    assert relay.drain(timeout=10)
    dw.execute(insert(items).values(row(3, 3)))
    assert relay.drain(timeout=10)
    assert ours(rclient, key) == [1, 2, 3]
    assert relay.foreign == 1
    quarantined = rclient.xrange(foreign_key(key))
    assert [(f[b"id"], f[b"e"]) for _e, f in quarantined] == [(fid, b'{"v": 1, "seq": 5}')]
    # the group, moved back to our top, now gets every event it had not seen
    rest = rclient.xreadgroup("g", "c", {key: ">"})
    assert [e for e, _ in rest[0][1]] == [b"2-0", b"3-0"]


def test_only_foreign_entries_left_republishes_the_retained_outbox(
    dw: DualWriter, rclient: redis.Redis, settings: Settings
) -> None:
    """If nothing of ours is left to find the cursor by, start from 0: duplicates are harmless to the
    idempotent consumers, a skipped seq would not be."""
    key = stream_key(settings.namespace)
    dw.execute(insert(items).values([row(1, 1), row(2, 2)]))
    relay = Relay.for_backends(dw.backends)
    assert relay.drain(timeout=10)
    rclient.xtrim(key, maxlen=0)
    rclient.xadd(key, {"e": b"garbage"})
    assert relay.drain(timeout=10)
    assert ours(rclient, key) == [1, 2]
