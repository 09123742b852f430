"""Verify that Postgres holds what SQLite holds, table by table, and optionally fix it.

Algorithm (data-diff's):
1. Both databases checksum the table in key ranges of about `segment_rows` rows, at the same time, in
   one query per range each (shadow.sqlsum: per-type SQL renders every value, the database joins and
   hashes them; no row leaves either server). Tables with a column type sqlsum cannot render (JSON,
   Numeric...) use the Python pass instead: one streamed scan per side, rows normalized and hashed
   here (shadow.checksum), SQLite's every `segment_rows`-th key as range bounds.
2. A range whose (count, hash) differ is bisected until it holds at most `leaf_rows` rows; then both
   sides' rows are fetched and diffed with the normalizer (the exact comparison: JSON key order, float
   noise, trailing spaces are no difference). With in-database checksums a range is cut into SPLIT
   parts at existing keys of its bigger side and both databases sum the parts; otherwise it is split
   near the middle and both halves are hashed here.
3. Keys found different are re-checked once after `recheck_delay` seconds (an in-flight change may
   have reached one side only); only keys still different are reported, each with the columns that
   differ. `verify_tables` scans every table first and waits once for all of them.

Report per table: rows on each side, `missing` (in SQLite, not Postgres), `extra` (in Postgres only),
`differing` keys (key text, as in `_dw_versions`), and `queries` issued (scans, split points, fetches).

`fix` (fix.py) re-applies SQLite's rows to the keys dualwrite wrote (missing ones are inserted), through the
apply rule; a `confirm` callback sees every table's plan first and may refuse.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Engine, Table

from dualwrite.engines import Backends
from dualwrite.events import key_text
from dualwrite.normalize import DEFAULT, VERIFY, Normalizer, canonical_text
from dualwrite.redis_keys import read_shadow_counts
from dualwrite.verify import fix as fix_rows
from dualwrite.verify import incremental, sql_render
from dualwrite.verify import sql_checksums as sqlsum
from dualwrite.verify.last import load_last, load_shadow_window, store_last
from dualwrite.verify.report import MAX_KEYS_REPORTED, TableReport, VerifyReport
from dualwrite.verify.row_checksums import Key, Side, Summary
from dualwrite.verify.sql_render import Col

__all__ = [
    "MAX_KEYS_REPORTED",
    "TableReport",
    "TableVerifier",
    "VerifyReport",
    "load_last",
    "load_shadow_window",
    "store_last",
    "verify_backends",
]

log = logging.getLogger("dualwrite.verify.verifier")
# (table, ranges summed, ranges in all) after each range of the first pass: `dualwrite verify`'s progress
Progress = Callable[[str, int, int], None]
SPLIT = 4  # parts a differing range is cut into per bisection step (in-database checksums)


class TableVerifier:
    def __init__(
        self,
        table: Table,
        sqlite: Engine,
        postgres: Engine,
        *,
        segment_rows: int = 10_000,
        leaf_rows: int = 64,
        recheck_delay: float = 0.0,
        normalizer: Normalizer = VERIFY,
        in_database: bool = True,
        progress: Progress | None = None,
    ) -> None:
        self.table = table
        self.s = Side("sqlite", sqlite, table, normalizer)
        self.p = Side("postgres", postgres, table, normalizer)
        self.segment_rows, self.leaf_rows = max(2, segment_rows), max(1, leaf_rows)
        self.recheck_delay = recheck_delay
        self.normalizer = normalizer
        # First pass in the databases (shadow.sqlsum) when every column type has a rendering there and
        # the normalizer is the one those renderings implement; otherwise rows are hashed here.
        cols = sql_render.plan(table) if in_database and normalizer in (DEFAULT, VERIFY) else None
        self.sql_cols = cols if cols is not None and sqlsum.supported_keys(table, cols) else None
        self.method = "python"
        self._queries: list[sqlsum.ChunkQuery] = []
        self.columns: dict[Key, list[str]] = {}  # differing key -> the columns that differ (last diff)
        self.fetched = (0, 0)  # rows recheck() found on each side
        self.progress = progress

    @property
    def queries(self) -> int:
        return self.s.queries + self.p.queries

    # -- step 1: segments ---------------------------------------------------------------------------
    def segments(self) -> tuple[list[Key], list[Summary], list[Summary]]:
        if self.sql_cols is not None:
            try:
                return self.sql_segments(self.sql_cols)
            except Exception as exc:  # a type the declared one does not match, an old server...
                log.warning("verify %s: in-database checksums failed (%r); hashing rows here", self.table.name, exc)
        return self.python_segments()

    def sql_segments(self, cols: list[Col]) -> tuple[list[Key], list[Summary], list[Summary]]:
        """Chunk checksums computed by both databases at once (two threads; each waits on its server)."""
        spans = sqlsum.ranges(self.s.engine, self.table, cols, self.segment_rows)
        self.s.queries += 1
        s_sums, p_sums = self.sums_of(spans, first_pass=True)
        self.method = "in-database"
        return [() if lo is None else lo for lo, _hi in spans], s_sums, p_sums

    def python_segments(self) -> tuple[list[Key], list[Summary], list[Summary]]:
        bounds: list[Key] = []
        s_sums: list[Summary] = []
        with self.s.engine.connect() as conn:
            for i, row in enumerate(self.s.scan(conn, None, None)):
                if i % self.segment_rows == 0:
                    bounds.append(self.s.tuple_key(row))
                    s_sums.append(Summary())
                s_sums[-1].add(self.s.hash(row))
            conn.rollback()
        if self.progress is not None:  # one scan per side: half done
            self.progress(self.table.name, 1, 2)
        if not bounds:
            bounds, s_sums = [()], [Summary()]
        p_sums = [Summary() for _ in bounds]
        with self.p.engine.connect() as conn:
            for row in self.p.scan(conn, None, None):
                idx = max(0, bisect.bisect_right(bounds, self.p.tuple_key(row)) - 1) if bounds != [()] else 0
                p_sums[idx].add(self.p.hash(row))
            conn.rollback()
        if self.progress is not None:
            self.progress(self.table.name, 2, 2)
        return bounds, s_sums, p_sums

    # -- step 2: bisection ----------------------------------------------------------------------------
    def bisect(self, lo: Key | None, hi: Key | None, ss: Summary, ps: Summary, out: list[tuple]) -> None:
        if ss.count == ps.count and ss.hash == ps.hash:
            return
        if max(ss.count, ps.count) <= self.leaf_rows:
            out.append((lo, hi))
            return
        side, n = (self.s, ss.count) if ss.count >= ps.count else (self.p, ps.count)
        mid = side.key_at(lo, hi, n // 2)
        if mid is None or mid == lo:
            out.append((lo, hi))  # cannot split further (should not happen with n > leaf_rows >= 1)
            return
        for a, b in ((lo, mid), (mid, hi)):
            self.bisect(a, b, self.s.summary(a, b), self.p.summary(a, b), out)

    def bisect_sql(self, lo: Key | None, hi: Key | None, ss: Summary, ps: Summary, out: list[tuple]) -> None:
        """The bisection with in-database checksums: a differing range is cut into SPLIT parts at existing
        keys of its bigger side, both sides sum the parts at once, and the differing parts recurse."""
        if ss.count == ps.count and ss.hash == ps.hash:
            return
        n = max(ss.count, ps.count)
        if n <= self.leaf_rows:
            out.append((lo, hi))
            return
        side, query = (self.s, self._queries[0]) if ss.count >= ps.count else (self.p, self._queries[1])
        side.queries += 1
        keys = sqlsum.split_keys(side.engine, query, lo, hi, max(1, -(-n // SPLIT)))
        if not keys:
            out.append((lo, hi))
            return
        edges: list[Key | None] = [lo, *keys, hi]
        spans = list(zip(edges[:-1], edges[1:], strict=True))
        s_sums, p_sums = self.sums_of(spans)
        for (a, b), sa, pa in zip(spans, s_sums, p_sums, strict=True):
            self.bisect_sql(a, b, sa, pa, out)

    def sums_of(
        self, spans: Sequence[sqlsum.Span | sqlsum.KeySet], first_pass: bool = False
    ) -> tuple[list[Summary], list[Summary]]:
        """Both sides' chunk checksums of `spans` (key ranges or key sets), computed by the two databases at
        the same time (the first pass reports its progress)."""
        from concurrent.futures import ThreadPoolExecutor

        assert self.sql_cols is not None
        if not self._queries:
            cols = self.sql_cols
            self._queries = [sqlsum.ChunkQuery(self.table, cols, s.engine.dialect.name) for s in (self.s, self.p)]

        done = [0, 0]  # ranges summed by each side; progress is the slower side's

        def counted(i: int) -> Callable[[], None]:
            def one_more() -> None:
                done[i] += 1
                if self.progress is not None and first_pass:
                    self.progress(self.table.name, min(done), len(spans))

            return one_more

        with ThreadPoolExecutor(2, thread_name_prefix="verify") as pool:
            futures = [
                pool.submit(sqlsum.chunk_sums, side.engine, q, spans, counted(i))
                for i, (side, q) in enumerate(zip((self.s, self.p), self._queries, strict=True))
            ]
            s_chunks, p_chunks = (f.result() for f in futures)
        self.s.queries += len(spans)
        self.p.queries += len(spans)
        return [Summary(c.count, c.key()) for c in s_chunks], [Summary(c.count, c.key()) for c in p_chunks]

    def diff_range(self, lo: Key | None, hi: Key | None) -> dict[str, set[Key]]:
        srows, prows = self.s.rows(lo, hi), self.p.rows(lo, hi)
        return self._diff(srows, prows)

    def _diff(self, srows: dict[Key, dict[str, Any]], prows: dict[Key, dict[str, Any]]) -> dict[str, set[Key]]:
        missing = set(srows) - set(prows)
        extra = set(prows) - set(srows)
        differing = set()
        for k in set(srows) & set(prows):
            if srows[k] == prows[k]:  # equal values stay equal once normalized (it only widens equality)
                continue
            a, b = self.normalizer.normalize(srows[k]), self.normalizer.normalize(prows[k])
            if canonical_text(a) != canonical_text(b):
                differing.add(k)
                self.columns[k] = sorted(c for c in a if canonical_text(a[c]) != canonical_text(b.get(c)))
        return {"missing": missing, "extra": extra, "differing": differing}

    def recheck(self, keys: Sequence[Key]) -> dict[str, set[Key]]:
        """The rows of `keys` on both sides (fetched at the same time), diffed."""
        from concurrent.futures import ThreadPoolExecutor

        def fetch(side: Side) -> dict[Key, dict[str, Any]]:
            with side.engine.connect() as conn:
                rows = side.fetch(conn, keys)
                conn.rollback()
            return rows

        if len(keys) < 100:  # a thread costs more than it saves
            srows, prows = fetch(self.s), fetch(self.p)
        else:
            with ThreadPoolExecutor(2, thread_name_prefix="verify-fetch") as pool:
                sf, pf = pool.submit(fetch, self.s), pool.submit(fetch, self.p)
                srows, prows = sf.result(), pf.result()
        self.fetched = (len(srows), len(prows))  # an incremental verify's row counts
        return self._diff(srows, prows)

    def run(self) -> TableReport:
        """scan(), then re-check its suspects after `recheck_delay` seconds."""
        rep, found = self.scan()
        if found and self.recheck_delay > 0:
            time.sleep(self.recheck_delay)
        return self.settle(rep, found)

    def scan(self) -> tuple[TableReport, dict[str, set[Key]]]:
        """The checksum pass and the bisection: the report so far and the keys found different (unchecked)."""
        start = time.perf_counter()
        rep = TableReport(self.table.name)
        found: dict[str, set[Key]] = {}
        try:
            bounds, s_sums, p_sums = self.segments()
            rep.sqlite_rows = sum(s.count for s in s_sums)
            rep.postgres_rows = sum(s.count for s in p_sums)
            leaves: list[tuple] = []
            for i, (ss, ps) in enumerate(zip(s_sums, p_sums, strict=True)):
                lo = None if i == 0 else bounds[i]
                hi = None if i == len(bounds) - 1 else bounds[i + 1]
                if self.method == "in-database":
                    try:
                        self.bisect_sql(lo, hi, ss, ps, leaves)
                        continue
                    except Exception as exc:  # the exact Python bisection still finds the rows
                        log.warning("verify %s: in-database bisection failed (%r)", self.table.name, exc)
                self.bisect(lo, hi, ss, ps, leaves)
            found = {"missing": set(), "extra": set(), "differing": set()}
            for lo, hi in leaves:
                for kind, keys in self.diff_range(lo, hi).items():
                    found[kind] |= keys
        except Exception as exc:
            rep.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            found = {}
        rep.queries = self.queries
        rep.seconds = round(time.perf_counter() - start, 3)
        return rep, (found if any(found.values()) else {})

    def settle(self, rep: TableReport, found: dict[str, set[Key]]) -> TableReport:
        """Re-read the suspects of scan() (when a recheck delay is set: an in-flight change may have reached
        one side only) and record what still differs, with the differing columns."""
        start = time.perf_counter()
        try:
            suspects = sorted(set().union(*found.values()), key=repr) if found else []
            if suspects and self.recheck_delay > 0:
                found = self.recheck(suspects)
            for kind, keys in found.items():
                ordered = sorted(keys, key=lambda k: tuple(map(repr, k)))
                rep._keys[kind] = ordered
                setattr(rep, kind, [key_text(list(k)) for k in ordered[:MAX_KEYS_REPORTED]])
            rep.columns = {
                key_text(list(k)): self.columns[k] for k in rep._keys.get("differing", [])[:MAX_KEYS_REPORTED]
            }
        except Exception as exc:
            rep.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        rep.queries = self.queries
        rep.seconds = round(rep.seconds + time.perf_counter() - start, 3)
        return rep

    # -- fix (fix.py) ---------------------------------------------------------------------------------
    def fix(self, rep: TableReport, postgres_apply: Engine, *, unowned: bool = False) -> TableReport:
        return fix_rows.apply(self, rep, fix_rows.plan(self, rep, unowned=unowned), postgres_apply)


def verify_tables(
    tables: Sequence[Table],
    sqlite: Engine,
    postgres: Engine,
    *,
    fix_with: Engine | None = None,
    fix_unowned: bool = False,
    confirm: Callable[[list[fix_rows.FixPlan]], object] | None = None,
    **kw: Any,
) -> VerifyReport:
    """Verify `tables`; with `fix_with` (an apply engine), fix what differs: every table's plan is made
    first and handed to `confirm` (which may raise, or return False: nothing is fixed)."""
    verifiers = [TableVerifier(table, sqlite, postgres, **kw) for table in tables]
    scanned = [tv.scan() for tv in verifiers]
    delay = float(kw.get("recheck_delay", 0.0))
    if delay > 0 and any(found for _rep, found in scanned):
        time.sleep(delay)  # once for every table's suspects, not once per table
    reports = [tv.settle(rep, found) for tv, (rep, found) in zip(verifiers, scanned, strict=True)]
    report = VerifyReport(reports)
    if fix_with is not None:
        fix_rows.fix_all(verifiers, report, fix_with, fix_unowned, confirm)
    return report


def verify_incremental(
    backends: Backends, tables: Sequence[Table], sqlite: Engine, mark: int, top: int, **kw: Any
) -> tuple[VerifyReport | None, str | None, list[TableVerifier]]:
    """The keys the change log touched in (mark, top] (verify.incremental), or None and why not."""
    touched = incremental.touched_since(backends, mark, top)
    if isinstance(touched, str):
        return None, touched, []
    verifiers = [TableVerifier(table, sqlite, backends.postgres, **kw) for table in tables]
    report = incremental.reverify(verifiers, touched, float(kw.get("recheck_delay", 0.0)))
    report.mode, report.touched = "incremental", touched.count()
    return report, None, verifiers


def verify_backends(
    backends: Backends,
    tables: Sequence[Table],
    *,
    fix: bool = False,
    fix_unowned: bool = False,
    confirm: Callable[[list[fix_rows.FixPlan]], object] | None = None,
    store: bool = True,
    sqlite: Engine | None = None,
    incremental_from_last: bool = False,
    captured: Sequence[str] | None = None,
    **kw: Any,
) -> VerifyReport:
    """verify_tables on a process's engines (`sqlite`: another SQLite read engine, e.g. one showing rowids);
    remember the result in Redis for the cutover gate. `incremental_from_last`: only the keys the change
    log touched since the last clean verify (verify.incremental), or a full verify saying why not.
    `captured`: every table name of the application (the kept results of other tables are dropped)."""
    fix_with = backends.postgres_apply if fix else None
    ns = backends.settings.namespace
    shadow_before = read_shadow_counts(backends.redis, ns) if store else {}
    sqlite = sqlite or backends.sqlite_read
    top = incremental.high_water(backends)  # before any row is read: later writes are above it
    report, fallback = None, None
    if incremental_from_last:
        last = load_last(backends.redis, ns)
        mark = incremental.plan(last, tables, top)
        if isinstance(mark, str):
            fallback = mark
        else:
            assert top is not None  # plan() said why not otherwise
            report, fallback, verifiers = verify_incremental(backends, tables, sqlite, mark, top, **kw)
            if report is not None:
                report.base = (last or {}).get("base") or (last or {}).get("at")
                if fix_with is not None:
                    fix_rows.fix_all(verifiers, report, fix_with, fix_unowned, confirm)
    if report is None:
        report = verify_tables(
            tables, sqlite, backends.postgres, fix_with=fix_with, fix_unowned=fix_unowned, confirm=confirm, **kw
        )
        report.fallback = fallback
    report.watermark = top
    if store:
        store_last(backends.redis, ns, report, fixed=fix, shadow_counts=shadow_before, captured=captured)
    return report
