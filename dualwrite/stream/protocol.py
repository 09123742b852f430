"""The Redis stream of change events: key names, entry ids and reply shapes shared by relay and replayer.

Entry ids are `<seq>-0`: the stream itself refuses a second copy of an event (XADD with an id not above
the top fails), so any number of relays may publish the same outbox and the stream still holds each
event once, in seq order.
"""

from __future__ import annotations

from typing import Any

import redis

EVENT_FIELD = b"e"


def entry_id(seq: int) -> str:
    return f"{seq}-0"


def seq_of(entry: bytes | str) -> int:
    text = entry.decode() if isinstance(entry, bytes) else entry
    return int(text.split("-", 1)[0])


def top_seq(client: redis.Redis, key: str) -> int | None:
    """The seq of the last id ever added to the stream (kept by Redis even after trimming);
    None if the stream does not exist (never created, or lost with a Redis restart)."""
    try:
        info = client.xinfo_stream(key)
    except redis.ResponseError as exc:
        if "no such key" in str(exc).lower():
            return None
        raise
    return seq_of(info["last-generated-id"])


def is_nogroup(exc: BaseException) -> bool:
    """The group (or its stream) is gone, e.g. Redis restarted without persistence."""
    return isinstance(exc, redis.ResponseError) and str(exc).startswith("NOGROUP")


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _id_tuple(entry: bytes | str) -> tuple[int, int]:
    ms, _, n = _text(entry).partition("-")
    return int(ms), int(n or 0)


# Redis < 7 has no group lag: up to this many undelivered entries are counted exactly with one XRANGE.
EXACT_LAG_UP_TO = 100


def group_lag(client: redis.Redis, key: str, group: str) -> tuple[int, int]:
    """(entries not yet delivered to the group, entries delivered but not acknowledged).

    Redis 7 reports the lag in XINFO GROUPS (one round trip); Redis 6.2 does not, and Redis 7 gives nil
    after deletions. Then: 0 iff the group's last-delivered id is the stream's last id (exact, so "caught
    up" never lies); otherwise one XRANGE of at most EXACT_LAG_UP_TO+1 entries counts a small lag exactly,
    and a larger one is estimated from the ids (`<seq>-0`: the seq gap bounds the count), capped by the
    stream's length. A missing stream has no lag; a missing group will re-read the whole stream."""
    try:
        groups = client.xinfo_groups(key)
    except redis.ResponseError as exc:
        if "no such key" in str(exc).lower():
            return 0, 0
        raise
    info: dict[str, Any] = {}
    for g in groups:
        row = {_text(k): v for k, v in g.items()}
        if _text(row.get("name", "")) == group:
            info = row
            break
    pending = int(info.get("pending") or 0)
    if info.get("lag") is not None:
        return int(info["lag"]), pending
    last = _id_tuple(info.get("last-delivered-id") or "0-0")
    stream = client.xinfo_stream(key)
    top = _id_tuple(stream["last-generated-id"])
    if top <= last:
        return 0, pending
    after = f"({last[0]}-{last[1]}"
    probe = client.xrange(key, min=after, count=EXACT_LAG_UP_TO + 1)
    if len(probe) <= EXACT_LAG_UP_TO:
        return len(probe), pending
    return max(len(probe), min(top[0] - last[0], int(stream["length"]))), pending


def parse_autoclaim(reply: Any) -> tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]], list[bytes]]:
    """XAUTOCLAIM's reply: Redis 6.2 gives [next, entries]; Redis 7 adds a third list of deleted ids.
    redis-py may or may not have parsed it; accept every shape."""
    if isinstance(reply, dict):
        return reply.get("next", b"0-0"), list(reply.get("claimed", [])), list(reply.get("deleted", []))
    items = list(reply)
    next_id = items[0] if items else b"0-0"
    raw_entries = items[1] if len(items) > 1 else []
    deleted = list(items[2]) if len(items) > 2 and items[2] else []
    entries: list[tuple[bytes, dict[bytes, bytes]]] = []
    for entry in raw_entries or []:
        if entry is None:
            continue
        eid, fields = entry[0], entry[1]
        if fields is None:  # Redis 6.2: an entry deleted while pending comes back with nil fields
            deleted.append(eid)
            continue
        if isinstance(fields, list | tuple):
            fields = dict(zip(fields[::2], fields[1::2], strict=True))
        entries.append((eid, fields))
    return next_id, entries, deleted
