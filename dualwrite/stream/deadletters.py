"""The dead-letter stream `<namespace>:changes:dead`: entries the replayer could not decode or apply.

Each dead letter keeps the original entry id, its payload exactly as it was on the stream (possibly not
UTF-8: the undecodable entries are the very ones that end up here), the error and a reason
(`decode`, `unknown_table`, `schema`, `apply`). Listing never fails on a payload; re-driving applies what decodes
and leaves the rest where it is.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import redis
from sqlalchemy.exc import DBAPIError

from dualwrite import metrics
from dualwrite.errors import DualwriteError, first_line
from dualwrite.events import ChangeEvent
from dualwrite.redis_keys import dead_letter_key

if TYPE_CHECKING:
    from dualwrite.engines import Backends
    from dualwrite.tables import Tables

log = logging.getLogger("dualwrite.stream.deadletters")
SHOWN_PAYLOAD_CHARS = 200


def dead_letter(client: redis.Redis, namespace: str, eid: bytes | str, payload: Any, error: str, reason: str) -> None:
    client.xadd(
        dead_letter_key(namespace),
        {"id": eid, "payload": payload if payload is not None else b"", "error": error[:2000], "reason": reason},
    )
    metrics.DEAD_LETTERS.labels(reason).inc()


def show(value: bytes | str) -> tuple[str, bool]:
    """Text for a terminal: (UTF-8 as is, or backslash-escaped bytes; True when the value was not UTF-8)."""
    if isinstance(value, str):
        return value, False
    try:
        return value.decode("utf-8"), False
    except UnicodeDecodeError:
        return value.decode("utf-8", "backslashreplace"), True


def list_dead_letters(client: redis.Redis, namespace: str, count: int = 100) -> list[dict[str, str]]:
    """The first `count` dead letters as text. A payload that is not UTF-8 is shown backslash-escaped
    (`\\xff`) and flagged with `payload_note`, so it can be told apart from text that reads the same."""
    out = []
    for eid, fields in client.xrange(dead_letter_key(namespace), count=count):
        row = {"dead_id": show(eid)[0]}
        for k, v in fields.items():
            name = show(k)[0]
            text, binary = show(v)
            if name == "payload":
                if binary:
                    row["payload_note"] = f"not UTF-8 ({len(v)} bytes), shown backslash-escaped"
                text = text[:SHOWN_PAYLOAD_CHARS]
            row[name] = text
        out.append(row)
    return out


def redrive(
    backends: Backends, tables: Tables, ids: list[str] | None = None, target: str = "postgres"
) -> dict[str, int]:
    """Re-apply dead letters directly through apply_events (stream ids can't go back) and delete each on
    success. Entries that do not decode (binary or malformed payloads), whose table is not in the catalog,
    or that still fail stay in the dead-letter stream with their original reason; each is logged."""
    from dualwrite.apply.rule import apply_events

    key = dead_letter_key(backends.settings.namespace)
    wanted = set(ids) if ids else None
    counts = {"applied": 0, "refused": 0, "failed": 0}
    for eid, fields in backends.redis.xrange(key):
        dead_id = show(eid)[0]
        if wanted is not None and dead_id not in wanted:
            continue
        try:
            ev = ChangeEvent.from_json(fields.get(b"payload", b""))
            tables.table(ev.table)
        except DualwriteError as exc:
            counts["refused"] += 1
            log.warning("redrive: %s refused, left dead-lettered: %s", dead_id, first_line(exc))
            continue
        side = ev.target if ev.origin else target  # the side opposite the primary that committed it
        engine = backends.apply_engine(side)
        try:
            with engine.begin() as conn:
                apply_events(conn, tables.table, [ev])
        except (DBAPIError, ValueError, TypeError) as exc:
            counts["failed"] += 1
            log.warning("redrive: %s still fails: %s", dead_id, first_line(exc))
            continue
        backends.redis.xdel(key, eid)
        counts["applied"] += 1
    return counts
