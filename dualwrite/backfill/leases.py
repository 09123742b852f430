"""Leases: several workers copy one table together and every key range is applied exactly once.

A lease is a key range (after, upto] of one table, handed to one worker.
- Claim (a short Postgres transaction holding the table's checkpoint row FOR UPDATE, so claims are
  serial): first take over a lease whose owner is dead or whose expiry passed; otherwise cut the next
  range, from the checkpoint's `claimed_key` to the chunk_size-th key after it in SQLite (the last lease
  is open-ended and sets `claimed_all`).
- Complete, in the chunk's own transaction (Copier.apply_chunk's `save`): the lease is marked done only
  if this worker still owns it, else LeaseLost rolls the chunk back, so no range is applied twice and
  the checkpoint counts each row once. The checkpoint adds the rows, moves `last_key` to the frontier
  below which every lease is done, and turns `done` with the last lease.
- Liveness: each worker holds a session advisory lock (LOCK_CLASS, owner) on a connection of its own for
  its whole life. A SIGKILLed worker's connection closes, the lock frees, and its lease is taken over at
  once; the expiry (ttl) only covers a worker that is alive but stuck.

One LeaseBook per worker (thread or process): its own leases count as free when it claims again.
"""

from __future__ import annotations

import logging
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, Table, and_, false, func, literal_column, select, text, true, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from dualwrite import metrics
from dualwrite.apply.rule import pk_columns
from dualwrite.backfill import checkpoint as ckpt
from dualwrite.backfill.checkpoint import checkpoints, leases
from dualwrite.backfill.cursor import Chunk, after_clause, count_rows, decode_key, encode_key, fetch, rowid_alias
from dualwrite.backfill.steps import ChunkSteps, TableReport
from dualwrite.bookkeeping import meta, move_sequences_past_keys
from dualwrite.errors import first_line

log = logging.getLogger("dualwrite.backfill.leases")
LOCK_CLASS = 0x44570001  # first key of the two-int advisory locks: "DW" leases
Key = tuple[Any, ...]


class LeaseLost(Exception):
    """Another worker took this lease over (this one was presumed dead or expired): drop the chunk."""


@dataclass(frozen=True)
class Lease:
    table: str
    n: int
    after: str | None  # encoded key, exclusive
    upto: str | None  # encoded key, inclusive; None = to the end of the table

    def describe(self) -> str:
        return f"({self.after or 'start'}, {self.upto or 'end'}]"


@dataclass
class LeasedReport(TableReport):
    """TableReport (rows_copied/rows_rejected = the checkpoint's totals, all workers) plus this worker's share."""

    rows_read: int = 0
    rows_rejected_run: int = 0
    leases_lost: int = 0


# -- SQLite side: ranges (in the cursor's order: key, then rowid where keys can repeat) -------------
def _order(conn: Connection, table: Table) -> tuple[list[Any], Any]:
    alias = rowid_alias(conn, table.name)
    return [table.c[c] for c in pk_columns(table)], literal_column(alias) if alias else None


def _within(cols: list[Any], rowid: Any, after: Key | None, upto: Key | None) -> Any:
    """(after, upto] in cursor order. `NOT (row after upto)` must hold when that test is NULL (a NULL key
    column, which sorts first), hence the coalesce."""
    cond = true() if after is None else after_clause(cols, after, rowid)
    if upto is not None:
        cond = and_(cond, func.coalesce(after_clause(cols, upto, rowid), false()) == false())
    return cond


def nth_key_after(engine: Engine, table: Table, after: Key | None, n: int) -> Key | None:
    """The cursor key of the n-th row after `after`, or None if fewer remain. (OFFSET from a keyset
    position costs n index entries, not the table's size.)"""
    with engine.connect() as conn:
        cols, rowid = _order(conn, table)
        order = [*cols, *([rowid] if rowid is not None else [])]
        stmt = select(*order).where(_within(cols, rowid, after, None)).order_by(*order).offset(max(0, n - 1))
        row = conn.execute(stmt.limit(1)).first()
        conn.rollback()
    if row is None:
        return None
    key = tuple(row[: len(cols)])
    return (*key, row[len(cols)]) if rowid is not None and any(v is None for v in key) else key


def read_range(engine: Engine, table: Table, after: Key | None, upto: Key | None) -> Chunk:
    """Rows in (after, upto] and `last_seq` S in one SQLite read transaction (as cursor.read_chunk).
    About chunk_size rows: only keys inserted into the range since its claim add to it (no LIMIT, so
    none is skipped; rows inserted later are covered by their own events, seq > S)."""
    with engine.connect() as conn, conn.begin():
        # Read last_seq first: the deferred transaction's snapshot starts here and covers the rows too.
        version = conn.execute(select(meta.c.value).where(meta.c.name == "last_seq")).scalar() or 0
        cols, rowid = _order(conn, table)
        order = [*cols, *([rowid] if rowid is not None else [])]
        names, values, bad = fetch(conn, table, select(table).where(_within(cols, rowid, after, upto)).order_by(*order))
    return Chunk(columns=names, values=values, version=int(version), last_key=upto, span=(after, upto), undecodable=bad)


def sessions_alive(engine: Engine, owners: list[int]) -> set[int]:
    """The owners among `owners` whose liveness lock is held, i.e. whose worker's session is still open
    (pg_locks: a two-key advisory lock shows as classid, objid with objsubid 2). Takes no lock itself."""
    if not owners:
        return set()
    with engine.connect() as conn:
        held = conn.execute(
            text(
                "SELECT objid::bigint FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 2"
                " AND classid = CAST(:c AS oid) AND database = (SELECT oid FROM pg_database"
                " WHERE datname = current_database()) AND objid = ANY(CAST(:o AS oid[]))"
            ),
            {"c": LOCK_CLASS, "o": [int(o) for o in owners]},
        ).scalars()
        alive = {int(o) for o in held}
        conn.rollback()
    return alive


# -- Postgres side: the book ----------------------------------------------------------------------
@dataclass
class LeaseBook:
    engine: Engine  # a plain Postgres engine (the checkpoint tables' schema)
    ttl_s: float = 300.0
    poll_s: float = 0.2  # while the rest of a table is leased to live workers
    name: str = field(default_factory=lambda: f"{socket.gethostname()}-{random.getrandbits(24):06x}")
    progress: Callable[[str, int, int], None] | None = None  # (table, rows done by all, rows expected)
    owner: int = 0
    _owner_conn: Connection | None = None

    def __post_init__(self) -> None:
        ckpt.ensure(self.engine)
        self._ensure_owner()

    def _ensure_owner(self) -> None:
        """Hold the liveness lock; after a lost connection take it again (others may have taken our
        leases meanwhile: our commits then fail with LeaseLost, which is safe)."""
        if self._owner_conn is not None:
            try:
                self._owner_conn.execute(text("SELECT 1"))
                return
            except Exception:  # noqa: BLE001 - the connection is gone; make a new one
                self._owner_conn.invalidate()
                self._owner_conn = None
        conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        while True:
            owner = self.owner or random.randint(1, 2**31 - 1)
            got = conn.execute(text("SELECT pg_try_advisory_lock(:c, :o)"), {"c": LOCK_CLASS, "o": owner}).scalar()
            if got:
                self.owner, self._owner_conn = owner, conn
                return
            self.owner = 0  # taken (by a live worker, or our old session not yet gone): pick another

    def close(self) -> None:
        """Free the liveness lock: leases still held become free to others at once."""
        if self._owner_conn is not None:
            self._owner_conn.close()
            self._owner_conn = None

    # -- claim ------------------------------------------------------------------------------------
    def claim(self, sqlite: Engine, table: Table, chunk_size: int) -> Lease | None:
        """A lease to copy, or None when nothing is left to claim (the table may still be in progress)."""
        self._ensure_owner()
        now = datetime.now(UTC)
        with self.engine.begin() as conn:
            conn.execute(
                pg_insert(checkpoints)
                .values(tbl=table.name, rows_copied=0, rows_rejected=0, status="copying", updated_at=now)
                .on_conflict_do_nothing()
            )
            head = conn.execute(select(checkpoints).where(checkpoints.c.tbl == table.name).with_for_update()).one()
            if head.status == "done":
                return None
            for lease in self._orphans(conn, table.name, now):
                conn.execute(
                    update(leases)
                    .where(leases.c.tbl == table.name, leases.c.n == lease.n)
                    .values(owner=self.owner, owner_name=self.name, expires_at=now + timedelta(seconds=self.ttl_s))
                )
                log.info("backfill %s: took over lease %d %s", table.name, lease.n, lease.describe())
                return lease
            if head.claimed_all:
                return None
            after_text = head.claimed_key if head.claims else head.last_key  # a pre-lease checkpoint resumes
            upto = nth_key_after(sqlite, table, decode_key(after_text), max(1, chunk_size))
            lease = Lease(table.name, head.claims + 1, after_text, encode_key(upto) if upto else None)
            conn.execute(
                # a keyword list shaped like tests/userapp/writer.py's load_settings call: nothing shared
                leases.insert().values(
                    tbl=table.name,
                    n=lease.n,
                    after_key=lease.after,
                    upto_key=lease.upto,
                    owner=self.owner,
                    owner_name=self.name,
                    expires_at=now + timedelta(seconds=self.ttl_s),
                    state="claimed",
                )
            )
            conn.execute(
                update(checkpoints)
                .where(checkpoints.c.tbl == table.name)
                .values(claimed_key=lease.upto or head.claimed_key, claims=lease.n, claimed_all=upto is None)
            )
        return lease

    def _orphans(self, conn: Connection, table: str, now: datetime) -> list[Lease]:
        rows = conn.execute(
            select(leases)
            .where(leases.c.tbl == table, leases.c.state == "claimed")
            .order_by(leases.c.n)
            .with_for_update(skip_locked=True)  # a lease being completed right now is not an orphan
        ).all()
        out = []
        for r in rows:
            free = r.owner is None or r.owner == self.owner or (r.expires_at is not None and r.expires_at < now)
            if not free:  # the owner's liveness lock is free only if its session is gone
                free = bool(
                    conn.execute(
                        text("SELECT pg_try_advisory_xact_lock(:c, :o)"), {"c": LOCK_CLASS, "o": int(r.owner)}
                    ).scalar()
                )
            if free:
                out.append(Lease(table, r.n, r.after_key, r.upto_key))
        return out

    # -- complete / release ------------------------------------------------------------------------
    def complete(self, conn: Connection, lease: Lease, saved: ckpt.Checkpoint) -> int:
        """In the chunk's transaction: mark the lease done (if still ours) and add the chunk (`saved`
        holds this chunk's rows only) to the checkpoint. Returns the checkpoint's rows_copied."""
        res = conn.execute(
            update(leases)
            .where(
                leases.c.tbl == lease.table,
                leases.c.n == lease.n,
                leases.c.owner == self.owner,
                leases.c.state == "claimed",
            )
            .values(state="done")
        )
        if res.rowcount != 1:
            raise LeaseLost(f"{lease.table} lease {lease.n} {lease.describe()} was taken over")
        # The row lock orders concurrent completions, so the frontier below sees the others' leases.
        head = conn.execute(
            select(checkpoints.c.claimed_key, checkpoints.c.claimed_all)
            .where(checkpoints.c.tbl == lease.table)
            .with_for_update()
        ).one()
        first_open = conn.execute(
            select(leases.c.n, leases.c.after_key)
            .where(leases.c.tbl == lease.table, leases.c.state != "done")
            .order_by(leases.c.n)
            .limit(1)
        ).first()
        done = first_open is None and bool(head.claimed_all)
        now = datetime.now(UTC)
        total = conn.execute(
            update(checkpoints)
            .where(checkpoints.c.tbl == lease.table)
            .values(
                rows_copied=checkpoints.c.rows_copied + saved.rows_copied,
                rows_rejected=checkpoints.c.rows_rejected + saved.rows_rejected,
                last_key=first_open.after_key if first_open is not None else head.claimed_key,
                status="done" if done else "copying",
                updated_at=now,
                started_at=func.coalesce(checkpoints.c.started_at, now),
                rate=ckpt.moving_rate(saved.rows_copied, now),
            )
            .returning(checkpoints.c.rows_copied)
        ).scalar_one()
        ckpt.record_version(conn, lease.table, saved.version)
        gone = [leases.c.tbl == lease.table, leases.c.state == "done"]  # done leases behind the frontier
        if first_open is not None:
            gone.append(leases.c.n < first_open.n)
        conn.execute(leases.delete().where(*gone))
        return int(total)

    def release(self, lease: Lease) -> None:
        """Give a lease back after a failure so another worker (or this one) can retry it at once."""
        with self.engine.begin() as conn:
            conn.execute(
                update(leases)
                .where(leases.c.tbl == lease.table, leases.c.n == lease.n, leases.c.owner == self.owner)
                .values(owner=None, expires_at=datetime.now(UTC))
            )

    def status(self, table: str) -> ckpt.Checkpoint:
        with self.engine.connect() as conn:
            cp = ckpt.load(conn, table)
            conn.rollback()
        return cp

    # -- the copy loop (Copier.copy_table delegates here when Copier.leases is set) -------------------
    def copy_table(self, steps: ChunkSteps, table: Table, *, max_chunks: int | None = None) -> LeasedReport:
        rep = LeasedReport(table.name)
        started = time.perf_counter()
        expected = count_rows(steps.source, table)
        metrics.BACKFILL_EXPECTED.labels(table.name).set(expected)
        while not steps.should_stop() and (max_chunks is None or rep.chunks < max_chunks):
            lease = self.claim(steps.source, table, steps.chunk_size())
            if lease is None:
                if self.status(table.name).status == "done":
                    break
                time.sleep(self.poll_s)  # the rest is leased to live workers: wait for them (or their death)
                continue
            t0 = time.perf_counter()
            chunk = read_range(steps.source, table, decode_key(lease.after), decode_key(lease.upto))
            done_rows: list[int] = []

            def save(conn: Connection, saved: ckpt.Checkpoint, ls: Lease = lease, out: list[int] = done_rows) -> None:
                out.append(self.complete(conn, ls, saved))

            try:
                ready, set_aside = steps.prepare(table, chunk)
                cp = ckpt.Checkpoint(table.name, version=chunk.version)  # this chunk's rows only
                result, bad = steps.apply(table, ready, cp, set_aside, save=save)
                bad += set_aside
            except LeaseLost as exc:
                rep.leases_lost += 1
                log.warning("backfill %s: %s; chunk dropped", table.name, exc)
                continue
            except BaseException as exc:
                log.error(
                    "backfill chunk failed table=%s range=%s rows=%d version=%d error=%s",
                    table.name,
                    lease.describe(),
                    len(chunk.values),
                    chunk.version,
                    first_line(exc, 300),
                )
                self.release(lease)
                raise
            rep.chunks += 1
            rep.rows_read += len(chunk.values)
            rep.rows_applied += result.applied
            rep.rows_stale += result.stale
            rep.rows_rejected_run += bad
            if done_rows:  # every worker's rows so far (the checkpoint this chunk committed with)
                metrics.follow_total(metrics.BACKFILL_ROWS, table.name, done_rows[-1])
            metrics.BACKFILL_CHUNK.labels(table.name).observe(time.perf_counter() - t0)
            if self.progress is not None and done_rows:
                self.progress(table.name, done_rows[-1], expected)
            steps.pace(len(chunk.values))
        cp = self.status(table.name)
        rep.rows_copied, rep.rows_rejected, rep.status = cp.rows_copied, cp.rows_rejected, cp.status
        if cp.status == "done":
            with steps.target.begin() as conn:
                move_sequences_past_keys(conn, [table])
        rep.seconds = time.perf_counter() - started
        log.info(
            "backfill %s: %s, %d rows read by this worker (%d chunks), %d/%d rows copied by all, %d rejected",
            table.name,
            rep.status,
            rep.rows_read,
            rep.chunks,
            rep.rows_copied,
            expected,
            rep.rows_rejected,
        )
        return rep
