"""Bounded state: the stream is trimmed to what every consumer group has acknowledged (minus a window of
`retention` events kept for inspection and late readers); published outbox rows are pruned past their age.

The trim point, per group: its oldest pending entry if it has any (delivered, not yet acknowledged: it
may be re-delivered or claimed), else the entry after its last-delivered id. The stream keeps every entry
at or above the minimum over groups, less `retention` seqs (ids are `<seq>-0`, so that is at most
`retention` acknowledged entries): XTRIM MINID. It is one Lua script, so no group can be moved back (the
relay's foreign-entry script does XGROUP SETID) between reading the groups and trimming. A stream without
a group is not trimmed: nothing has acknowledged anything (the length gauge and alert show it growing).

So the stream holds at most `retention` + (entries some group has not acknowledged). A lost stream is
rebuilt from the outbox (the relay republishes every retained row), which reaches back `outbox_retention`:
older published rows are pruned in batches; unpublished rows (seq above the stream's top) never are.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import redis
from sqlalchemy import Engine, delete, func, select
from sqlalchemy.exc import SQLAlchemyError

from dualwrite import metrics
from dualwrite.bookkeeping import outbox
from dualwrite.types import utcnow

log = logging.getLogger("dualwrite.stream.retention")
PRUNE_BATCH = 5000

# KEYS: stream; ARGV: retention (seqs kept below the acknowledged point), dry ('1': compute only).
# Returns nil (no stream) or {minid or '', trimmed, length, {group, boundary, ...}}.
TRIM_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return nil end
local function parse(id)
  local ms, sq = string.match(id, '^(%d+)%-(%d+)$')
  return tonumber(ms), tonumber(sq)
end
local low_ms, low_sq, seen = nil, nil, {}
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local f = {}
  for i = 1, #g, 2 do f[g[i]] = g[i + 1] end
  local ms, sq
  if tonumber(f['pending']) > 0 then
    -- the group's oldest unacknowledged entry stays (summary form: {count, min, max, consumers})
    local p = redis.call('XPENDING', KEYS[1], f['name'])
    ms, sq = parse(p[2])
  else
    ms, sq = parse(f['last-delivered-id'])
    sq = sq + 1
  end
  seen[#seen + 1] = f['name']
  seen[#seen + 1] = ms .. '-' .. sq
  if low_ms == nil or ms < low_ms or (ms == low_ms and sq < low_sq) then low_ms, low_sq = ms, sq end
end
if low_ms == nil then return {'', 0, redis.call('XLEN', KEYS[1]), seen} end
local keep = tonumber(ARGV[1])
local minid
if keep > 0 then
  -- the first seq some group still needs: low_ms itself is acknowledged when low_sq > 0
  local first = low_ms
  if low_sq > 0 then first = low_ms + 1 end
  local m = first - keep
  if m < 0 then m = 0 end
  minid = m .. '-0'
else
  minid = low_ms .. '-' .. low_sq
end
local trimmed = 0
if ARGV[2] ~= '1' then trimmed = redis.call('XTRIM', KEYS[1], 'MINID', minid) end
return {minid, trimmed, redis.call('XLEN', KEYS[1]), seen}
"""


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


@dataclass
class TrimResult:
    exists: bool
    minid: str | None = None  # None: no group, nothing trimmed
    trimmed: int = 0
    length: int = 0
    groups: dict[str, str] = field(default_factory=dict)  # group -> the first id it still needs

    @property
    def held_by(self) -> str | None:
        """The group whose acknowledgements hold the trim point back (the slowest)."""
        if not self.groups:
            return None
        return min(self.groups, key=lambda g: tuple(int(p) for p in self.groups[g].split("-")))


class StreamTrimmer:
    """Trims one stream (see the module docstring); `trim()` is safe to call from any number of processes."""

    def __init__(self, client: redis.Redis, key: str, retention: int) -> None:
        if retention < 0:
            raise ValueError("stream retention must be >= 0")
        self.client, self.key, self.retention = client, key, retention
        self._script = client.register_script(TRIM_LUA)

    def trim(self, *, dry: bool = False) -> TrimResult:
        reply = self._script(keys=[self.key], args=[self.retention, "1" if dry else "0"])
        if reply is None:
            metrics.STREAM_LENGTH.set(0)
            return TrimResult(False)
        minid, trimmed, length, seen = _text(reply[0]), int(reply[1]), int(reply[2]), reply[3]
        groups = {_text(seen[i]): _text(seen[i + 1]) for i in range(0, len(seen), 2)}
        metrics.STREAM_LENGTH.set(length)
        metrics.STREAM_RETENTION.set(self.retention)
        if trimmed:
            metrics.STREAM_TRIMMED.inc(trimmed)
        return TrimResult(True, minid or None, trimmed, length, groups)


def prune_outbox(engine: Engine, top: int, retention: timedelta, batch: int = PRUNE_BATCH) -> int:
    """Delete `engine`'s outbox rows that are published (seq <= top, the stream's top) and older than
    `retention`, `batch` rows per transaction (short locks on a live primary). Returns how many."""
    cutoff, pruned = utcnow() - retention, 0
    while True:
        with engine.begin() as conn:
            doomed = (
                select(outbox.c.seq)
                .where(outbox.c.seq <= top, outbox.c.created_at < cutoff)
                .order_by(outbox.c.seq)
                .limit(batch)
                .scalar_subquery()
            )
            n = conn.execute(delete(outbox).where(outbox.c.seq.in_(doomed))).rowcount or 0
        pruned += n
        if n < batch:
            break
    if pruned:
        metrics.OUTBOX_PRUNED.inc(pruned)
    return pruned


def outbox_rows(engine: Engine) -> tuple[int, Any]:
    """(rows in the outbox, the oldest row's created_at or None)."""
    with engine.connect() as conn:
        n, oldest = conn.execute(select(func.count(), func.min(outbox.c.created_at))).one()
        conn.rollback()
    return int(n), oldest


def measure_outboxes(sources: list[tuple[str, Engine]], retention: timedelta) -> dict[str, tuple[int, Any] | str]:
    """Per backend: (rows, oldest created_at), or why it could not be read; exports them as metrics."""
    out: dict[str, tuple[int, Any] | str] = {}
    metrics.OUTBOX_RETENTION.set(retention.total_seconds())
    now = utcnow()
    for backend, engine in sources:
        try:
            n, oldest = out[backend] = outbox_rows(engine)
        except SQLAlchemyError as exc:
            out[backend] = str(exc).splitlines()[0][:200]
            continue
        metrics.OUTBOX_ROWS.labels(backend).set(n)
        metrics.OUTBOX_OLDEST_AGE.labels(backend).set(0 if oldest is None else (now - oldest).total_seconds())
    return out


def status_lines(client: redis.Redis, key: str, retention: int, outbox_retention: timedelta, sources: Any) -> list[str]:
    """`dualwrite status`: the stream's length and trim point, and each outbox's size and retention."""
    lines = []
    try:
        r = StreamTrimmer(client, key, retention).trim(dry=True)
        if not r.exists:
            lines.append("stream: absent (nothing published yet, or Redis lost it: the relay rebuilds it)")
        elif r.minid is None:
            lines.append(f"stream: {r.length} entries, not trimmed (no consumer group has read it)")
        else:
            lines.append(
                f"stream: {r.length} entries, trim point {r.minid} (group {r.held_by} needs "
                f"{r.groups[r.held_by or '']} on; {retention} acknowledged entries kept below it)"
            )
    except redis.RedisError as exc:
        lines.append(f"stream: unknown (redis: {exc})")
    for backend, found in measure_outboxes(sources, outbox_retention).items():
        if isinstance(found, str):
            lines.append(f"outbox {backend}: unreadable ({found})")
        else:
            n, oldest = found
            since = f", oldest {oldest:%Y-%m-%d %H:%M:%S}" if oldest is not None else ""
            lines.append(f"outbox {backend}: {n} rows{since} (published rows kept {_span(outbox_retention)})")
    return lines


def _span(td: timedelta) -> str:
    s = int(td.total_seconds())
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= n and s % n == 0:
            return f"{s // n}{unit}"
    return f"{s}s"
