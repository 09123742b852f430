"""The write fence's two sides on the real Redis (dualwrite.fence): a member holds new writes while a fence
stands, lets in-flight ones finish before it acknowledges, never holds past the fence's timeout (a flipper
that died), reports each held write's pause; the flipper names a member that did not acknowledge."""

from __future__ import annotations

import threading
import time

import pytest
import redis
from prometheus_client import REGISTRY

from dualwrite.engines import open_redis
from dualwrite.fence import Fence, FenceBusyError, FenceMember, live_members, read_fence
from tests.conftest import REDIS_TEST_URL


@pytest.fixture
def client():  # type: ignore[no-untyped-def]
    c = redis.Redis.from_url(REDIS_TEST_URL)
    yield c
    c.close()


def _member(client, ns):  # type: ignore[no-untyped-def]
    m = FenceMember(client, ns)
    m.start()
    deadline = time.monotonic() + 10
    while m.id not in live_members(client, ns):
        assert time.monotonic() < deadline, "the member never registered"
        time.sleep(0.01)
    return m


def _write_in_thread(member: FenceMember, hold: float = 0.0) -> tuple[threading.Thread, dict[str, float]]:
    """A write transaction (enter, `hold` seconds of work, exit) in its own thread; when it got in."""
    got: dict[str, float] = {}

    def run() -> None:
        t0 = time.monotonic()
        member.enter()
        got["waited"] = time.monotonic() - t0
        time.sleep(hold)
        member.exit()

    th = threading.Thread(target=run)
    th.start()
    return th, got


def test_a_fence_holds_new_writes_until_it_is_lifted_and_reports_the_pause(client, redis_prefix) -> None:  # type: ignore[no-untyped-def]
    member = _member(client, redis_prefix)
    before = REGISTRY.get_sample_value("dualwrite_fence_pause_seconds_count") or 0.0
    try:
        fence = Fence(client, redis_prefix, timeout=2.0, label="test")
        summary = fence.raise_()
        assert summary.members == [member.id]
        with pytest.raises(FenceBusyError):
            Fence(client, redis_prefix, timeout=2.0).raise_()  # one fence at a time
        assert fence.wait_acks(time.monotonic() + 5) == []
        th, got = _write_in_thread(member)
        time.sleep(0.2)
        assert "waited" not in got  # held
        fence.lift()
        th.join(5)
        assert 0.15 < got["waited"] < 1.5, got
        assert read_fence(client, redis_prefix) is None
        summary = fence.collect(wait=5)
        assert summary.reported == [member.id] and len(summary.pauses) == 1, summary
        assert summary.pauses[0] == pytest.approx(got["waited"], abs=0.05)
        assert "1/1 instance(s) acknowledged" in summary.line() and "1 write(s) paused" in summary.line()
        assert REGISTRY.get_sample_value("dualwrite_fence_pause_seconds_count") == before + 1
    finally:
        member.close()
    assert member.id not in live_members(client, redis_prefix)  # a closed member is expected by nobody


def test_in_flight_writes_finish_before_the_ack_and_a_long_one_is_named(client, redis_prefix) -> None:  # type: ignore[no-untyped-def]
    member = _member(client, redis_prefix)
    try:
        th, _ = _write_in_thread(member, hold=0.3)  # in flight when the fence goes up
        time.sleep(0.05)
        fence = Fence(client, redis_prefix, timeout=2.0)
        fence.raise_()
        t0 = time.monotonic()
        assert fence.wait_acks(time.monotonic() + 5) == []
        assert time.monotonic() - t0 > 0.15  # acknowledged only once the write finished
        fence.lift()
        th.join(5)
        time.sleep(0.1)
        th, _ = _write_in_thread(member, hold=1.5)  # a write that outlasts the flipper's bound
        time.sleep(0.05)
        fence = Fence(client, redis_prefix, timeout=0.5)
        fence.raise_()
        assert fence.wait_acks(time.monotonic() + 0.4) == [member.id]
        fence.lift()
        th.join(5)
    finally:
        member.close()


def test_a_member_never_holds_past_the_timeout_when_nobody_lifts(client, redis_prefix) -> None:  # type: ignore[no-untyped-def]
    member = _member(client, redis_prefix)
    try:
        Fence(client, redis_prefix, timeout=0.4).raise_()  # the flipper dies here: nobody lifts
        time.sleep(0.1)
        th, got = _write_in_thread(member)
        th.join(5)
        assert got["waited"] < 0.4 + 0.1, got
    finally:
        member.close()


def test_without_redis_a_write_is_never_held(redis_prefix) -> None:  # type: ignore[no-untyped-def]
    dead = open_redis("redis://127.0.0.1:1/0", timeout=0.2)
    member = FenceMember(dead, redis_prefix)
    member.start()
    try:
        th, got = _write_in_thread(member)
        th.join(5)
        assert got["waited"] < 0.05, got
    finally:
        member.close()
