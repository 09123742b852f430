"""Incremental re-verify (ghostferry's reverify): after a clean verify, compare again only the keys the
change log touched since it began.

A verify records a watermark when it begins: the sequence high-water mark (`_dw_meta.last_seq`, the
highest on either side). Every write dualwrite captures gets a seq above it and sits in an outbox, so
the keys that can have changed since are exactly the keys of the outbox rows above the watermark; every
other key still holds what that verify compared. An incremental run fetches those keys on both sides
in sets of KEYSET keys, each set checksummed inside both databases at once as a full verify sums a key
range (verify.sql_checksums), so only the rows of a set whose sums differ leave the servers and are
compared exactly (tables without in-database checksums fetch every touched row); what differs is
re-checked after the recheck delay, and, when clean, the watermark moves up to where it began.

It falls back to a full verify (and says why) when it cannot know what changed: no clean verify with a
watermark on record, a table that verify did not cover, or a change log with holes (outbox rows above
the watermark pruned: the count of rows above it is less than the seqs handed out since). Writes that
bypass dualwrite (another program writing straight to one database) are in no change log: only a full
verify sees those, which is why the gate names the full verify an incremental one rests on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, Table, select
from sqlalchemy.exc import SQLAlchemyError

from dualwrite.bookkeeping import meta, outbox
from dualwrite.engines import Backends
from dualwrite.events import event_keys, key_text
from dualwrite.verify import sql_checksums as sqlsum
from dualwrite.verify.report import TableReport, VerifyReport
from dualwrite.verify.row_checksums import Key

log = logging.getLogger("dualwrite.verify.incremental")
KEYSET = 500  # touched keys summed per query: a set that differs costs fetching its rows


def high_water(backends: Backends) -> int | None:
    """The highest seq handed out on either side (0 before the first captured write); None where there is
    no change log (a database dualwrite does not capture, e.g. one a plain `migrate` loaded)."""
    top = 0
    for engine in (backends.sqlite_read, backends.postgres):
        try:
            with engine.connect() as conn:
                value = conn.execute(select(meta.c.value).where(meta.c.name == "last_seq")).scalar()
                conn.rollback()
        except SQLAlchemyError:  # no _dw_meta on this side
            return None
        top = max(top, int(value or 0))
    return top


@dataclass
class Touched:
    """The keys the change log holds above a watermark, per table name (key identity -> key values)."""

    keys: dict[str, dict[Any, dict[str, Any]]] = field(default_factory=dict)
    events: int = 0

    def count(self) -> int:
        return sum(len(v) for v in self.keys.values())


def touched_since(backends: Backends, mark: int, top: int) -> Touched | str:
    """The keys of the events with mark < seq <= top in either outbox, or why the log cannot say."""
    out = Touched()
    for engine in (backends.sqlite_read, backends.postgres):
        payloads = _payloads(engine, mark, top)
        out.events += len(payloads)
        for table, key in event_keys(payloads):
            # the key's identity: its items sorted by column (one item needs no sorting)
            ident: Any = tuple(key.items()) if len(key) == 1 else tuple(sorted(key.items()))
            keys = out.keys.get(table)
            if keys is None:
                keys = out.keys[table] = {}
            try:
                keys[ident] = key
            except TypeError:  # a key value that is not hashable: its canonical text
                keys[key_text(sorted(key.items()))] = key
    if out.events < top - mark:
        return (
            f"the change log since the last clean verify has holes ({out.events} event(s) kept for "
            f"{top - mark} seq(s) handed out: the outbox was pruned past it)"
        )
    return out


def _payloads(engine: Engine, mark: int, top: int) -> list[Any]:
    """The outbox payloads with mark < seq <= top, in one fetch over the DBAPI (no per-row SQLAlchemy work:
    an incremental verify reads thousands of them for their keys alone)."""
    mark_sql = "%s" if engine.dialect.name == "postgresql" else "?"
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute(f"SELECT payload FROM {outbox.name} WHERE seq > {mark_sql} AND seq <= {mark_sql}", (mark, top))
        rows = cur.fetchall()
        cur.close()
        raw.rollback()
    finally:
        raw.close()
    return [r[0] for r in rows]


def plan(last: dict[str, Any] | None, tables: Sequence[Table], top: int | None) -> int | str:
    """The watermark to re-verify from, or why a full verify is needed (`top`: high_water() now)."""
    if top is None:
        return "no change log (no dualwrite bookkeeping here)"
    if last is None:
        return "no verify on record"
    if not last.get("clean"):
        return "the last verify was not clean"
    mark = last.get("watermark")
    if mark is None:
        return "the last verify recorded no watermark"
    # the watermark holds for the tables that verify covered, all of them: the same set, or a full verify
    covered, wanted = set(last.get("tables", {})), {t.name for t in tables}
    if covered != wanted:
        other = sorted(wanted - covered) or sorted(covered - wanted)
        return f"the last clean verify covered other tables ({', '.join(other)})"
    return int(mark)


def suspects(tv: Any, keys: list[Key]) -> tuple[list[Key], tuple[int, int]] | None:
    """The keys of the key sets whose in-database checksums differ (their rows are then fetched and
    compared exactly), and both sides' rows among `keys`; None where the table has no in-database
    checksums (or they failed): every touched row is fetched."""
    if tv.sql_cols is None:
        return None
    try:
        ordered = sorted(keys)  # neighbouring keys in one set: fewer index pages per query
    except TypeError:
        ordered = list(keys)
    sets = [sqlsum.KeySet(tuple(ordered[i : i + KEYSET])) for i in range(0, len(ordered), KEYSET)]
    try:
        s_sums, p_sums = tv.sums_of(sets)
    except Exception as exc:  # noqa: BLE001 - the rows themselves still decide
        log.warning("verify --incremental %s: in-database checksums failed (%r)", tv.table.name, exc)
        return None
    found = [k for ks, a, b in zip(sets, s_sums, p_sums, strict=True) if a != b for k in ks.keys]
    return found, (sum(a.count for a in s_sums), sum(b.count for b in p_sums))


def reverify(verifiers: Sequence[Any], touched: Touched, recheck_delay: float) -> VerifyReport:
    """Fetch each table's touched keys on both sides (TableVerifiers), re-check what differs once after
    the delay."""
    reports, found = [], []
    for tv in verifiers:
        start = time.perf_counter()
        rep = TableReport(tv.table.name)
        pk, touched_keys = tv.s.pk, touched.keys.get(tv.table.name, {}).values()
        one = pk[0] if len(pk) == 1 else None  # the usual one-column key: no generator per key
        keys = [(k[one],) for k in touched_keys] if one is not None else [tuple(k[c] for c in pk) for k in touched_keys]
        try:
            summed = suspects(tv, keys) if keys else None
            if summed is None:
                diff = tv.recheck(keys) if keys else {}
                rep.sqlite_rows, rep.postgres_rows = tv.fetched  # of the touched keys
            else:
                keys, (rep.sqlite_rows, rep.postgres_rows) = summed
                diff = tv.recheck(keys) if keys else {}
        except Exception as exc:  # noqa: BLE001 - reported per table, as a full verify does
            rep.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            diff = {}
        rep.seconds = time.perf_counter() - start
        reports.append(rep)
        found.append(diff if any(diff.values()) else {})
    if recheck_delay > 0 and any(found):
        time.sleep(recheck_delay)
    return VerifyReport([tv.settle(rep, f) for tv, rep, f in zip(verifiers, reports, found, strict=True)])
