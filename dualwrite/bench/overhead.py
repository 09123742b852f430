"""Section 2: dual-write overhead. One single-row insert through the adapter in `dual_write`, the relay on (as
the README uses it: `dw.execute(insert(table), row)`, the statement built once, its fast form), vs the
raw-driver baseline: the same insert on SQLite (sqlite3, one autocommitted INSERT;
the writers of the process queue on a lock rather than in SQLite's sleeping busy handler, as the adapter's
do) and then on Postgres (psycopg2 in autocommit: one round trip), one connection of each per writer thread,
no SQLAlchemy and no dualwrite: the tightest two writes an application could make. With 1 and 5 concurrent
writers; the write-behind mode (settings.write_behind: Postgres applied by a replay worker process from the
stream, off the request path) is measured beside the synchronous one, and so is the design floor (DesignFloor:
the statements the design needs, outbox and version claim included, through the same raw drivers), which
says how much of the gap is the design's and how much the adapter's; write-behind's floor is its SQLite
half alone (the request path write-behind leaves: the transaction with the outbox, no Postgres write).

Goals (issue 18): p99(dual) <= 1.25 x p99(raw) with 1 writer, <= 1.5 x with 5; throughput >= 0.5 x raw's.
The variants run interleaved in RUNS rounds so that drift of the shared machine hits them alike; each goal is
the median of the per-round ratios, with their spread."""

from __future__ import annotations

import sqlite3
import threading
import time
from typing import Any

import psycopg2
from prometheus_client import REGISTRY
from sqlalchemy import insert
from sqlalchemy.engine import make_url

import dualwrite.metrics  # noqa: F401 - registers the adapter histograms
from dualwrite.bench.common import STORE, BenchEnv, bench_metadata, bench_tables, ratio, rows, run_workers, summarize
from dualwrite.bench.goals import goal, median
from dualwrite.testing import prepared_writer

P99_GOALS = {1: 1.25, 5: 1.5}
THROUGHPUT_GOAL = 0.5
RUNS = 3
FLOOR = "design floor (raw drivers)"
BEHIND_FLOOR = "write-behind floor (raw drivers)"
FLOORS = {FLOOR: "the design's statements", BEHIND_FLOOR: "write-behind's request path (the SQLite half)"}
PARTS = {"sqlite": "primary SQLite tx (with outbox)", "postgres": "Postgres apply", "dual": "whole adapter write"}


def _sums() -> dict[str, tuple[float, float]]:
    """Cumulative (sum, count) of the adapter's own write-duration histogram per part, store bench, op insert."""
    name = "dualwrite_write_duration_seconds"
    out = {}
    for backend in PARTS:
        labels = {"backend": backend, "store": STORE, "op": "insert"}
        out[backend] = (
            REGISTRY.get_sample_value(f"{name}_sum", labels) or 0.0,
            REGISTRY.get_sample_value(f"{name}_count", labels) or 0.0,
        )
    return out


def _breakdown(parts: dict[str, list[float]], dual_avg_ms: float) -> dict[str, float]:
    """Mean milliseconds per dual write spent in each part (from the adapter's metrics)."""
    mean = {k: (s / c * 1000 if c else 0.0) for k, (s, c) in parts.items()}
    return {
        "open_primary_and_caller_ms": round(dual_avg_ms - mean["dual"], 3),
        "primary_sqlite_tx_ms": round(mean["sqlite"], 3),
        "postgres_apply_ms": round(mean["postgres"], 3),
        "after_commit_rest_ms": round(mean["dual"] - mean["sqlite"] - mean["postgres"], 3),
        "total_ms": round(mean["dual"], 3),
    }


class RawDrivers:
    """The baseline: one insert on SQLite then on Postgres through the drivers, a connection of each per thread."""

    def __init__(self, settings: Any, table: Any) -> None:
        self.sqlite_path = make_url(settings.sqlite_url).database or settings.sqlite_url
        self.pg_dsn = make_url(settings.postgres_url).set(drivername="postgresql").render_as_string(False)
        cols = [c.name for c in table.columns]
        names = ", ".join(cols)
        self.cols = cols
        self.sqlite_sql = f"INSERT INTO {table.name} ({names}) VALUES ({', '.join('?' * len(cols))})"
        self.pg_sql = (
            f'INSERT INTO "{settings.pg_schema}".{table.name} ({names}) VALUES ({", ".join(["%s"] * len(cols))})'
        )
        self.local = threading.local()
        self.opened: list[Any] = []
        self.lock = threading.Lock()
        self.sqlite_lock = threading.Lock()

    def _conns(self) -> tuple[sqlite3.Connection, Any]:
        got = getattr(self.local, "conns", None)
        if got is None:
            lite = sqlite3.connect(self.sqlite_path, timeout=30, isolation_level=None, check_same_thread=False)
            lite.execute("PRAGMA synchronous=NORMAL")  # the adapter's pragmas (the file is in WAL mode already)
            pg = psycopg2.connect(self.pg_dsn)
            pg.autocommit = True
            got = self.local.conns = (lite, pg)
            with self.lock:
                self.opened += got
        return got

    def __call__(self, row: dict[str, Any]) -> None:
        lite, pg = self._conns()
        values = [row[c] for c in self.cols]
        lite_values = [v.isoformat(" ") if hasattr(v, "isoformat") else v for v in values]  # as SQLAlchemy stores
        with self.sqlite_lock:
            lite.execute(self.sqlite_sql, lite_values)
        with pg.cursor() as cur:
            cur.execute(self.pg_sql, values)

    def close(self) -> None:
        for c in self.opened:
            c.close()


class DesignFloor(RawDrivers):
    """What the design itself needs, through the raw drivers with no Python framework around them: the
    SQLite transaction with the primary check, the insert, the seq bump and the event (encoded) in the
    outbox; then ONE Postgres statement that claims the key's version and writes the row (the apply rule
    in one round trip). The gap between this and the raw drivers is the design's; the gap between the
    adapter and this is the adapter's (SQLAlchemy, metrics, the relay thread)."""

    def __init__(self, settings: Any, table: Any, *, postgres: bool = True) -> None:
        super().__init__(settings, table)
        self.table, self.postgres = table, postgres  # postgres=False: write-behind's floor, the SQLite half
        pk = self.cols[0]
        n = len(self.cols)
        sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in self.cols[1:])
        params = ", ".join(f"${i + 1}" for i in range(n))
        self.pg_prepare = (
            f"PREPARE dw_floor AS WITH claim AS (INSERT INTO _dw_versions (tbl, pk, seq) "
            f"VALUES (${n + 1}, ${n + 2}, ${n + 3}) ON CONFLICT (tbl, pk) DO UPDATE SET seq = EXCLUDED.seq "
            f"WHERE _dw_versions.seq < EXCLUDED.seq RETURNING pk) "
            f'INSERT INTO "{settings.pg_schema}".{table.name} ({", ".join(self.cols)}) SELECT {params} FROM claim '
            f"ON CONFLICT ({pk}) DO UPDATE SET {sets}"
        )
        self.pg_exec = f"EXECUTE dw_floor ({', '.join(['%s'] * (n + 3))})"
        self.sqlite_sql += " RETURNING *"
        self.search_path = f'"{settings.pg_schema}", "{settings.state_schema}"'

    def __call__(self, row: dict[str, Any]) -> None:
        from dualwrite.events import ChangeEvent
        from dualwrite.types import utcnow

        lite, pg = self._conns()
        if not getattr(self.local, "prepared", False):
            with pg.cursor() as cur:  # the bookkeeping's schema, as the adapter's sessions see it
                cur.execute("SELECT set_config('search_path', %s, false)", (self.search_path,))
                cur.execute(self.pg_prepare)
            self.local.prepared = True
        values = [row[c] for c in self.cols]
        lite_values = [v.isoformat(" ") if hasattr(v, "isoformat") else v for v in values]
        key = str(row[self.cols[0]])
        with self.sqlite_lock:
            lite.execute("BEGIN IMMEDIATE")
            lite.execute("SELECT value FROM _dw_meta WHERE name = 'is_primary'").fetchone()
            image = dict(zip(self.cols, lite.execute(self.sqlite_sql, lite_values).fetchone(), strict=True))
            (seq,) = lite.execute(
                "UPDATE _dw_meta SET value = value + 1 WHERE name = 'last_seq' RETURNING value"
            ).fetchone()
            ev = ChangeEvent(table=self.table.name, op="upsert", key={self.cols[0]: row[self.cols[0]]}, image=image)
            ev.seq, ev.ts, ev.origin = seq, utcnow(), "sqlite"
            lite.execute(
                "INSERT INTO _dw_outbox (seq, id, tbl, op, payload, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (seq, ev.id, ev.table, ev.op, ev.to_json(), ev.ts.isoformat(" ")),
            )
            lite.execute("COMMIT")
        if self.postgres:
            with pg.cursor() as cur:
                cur.execute(self.pg_exec, [*values, self.table.name, f"[{key}]", seq])


def _writer(env: BenchEnv, label: str, table: Any, **settings: Any) -> Any:
    s = env.settings(label)
    return prepared_writer(s.with_(**settings) if settings else s, bench_tables(table), phase="dual_write", relay=True)


def run(env: BenchEnv, writes: int, writer_counts: tuple[int, ...] = (1, 5), log: Any = print) -> dict[str, Any]:
    _md, table = bench_metadata()
    sync = _writer(env, "overhead", table)
    behind = _writer(env, "overhead_wb", table, write_behind=True)
    replayer = _replay_worker(behind)  # write-behind's other side: a replay worker process, as in production
    raw = RawDrivers(sync.settings, table)
    out: dict[str, Any] = {"writes_per_variant": writes, "runs": RUNS, "goals": [], "results": [], "per_run": []}
    next_id = 1
    floor = DesignFloor(sync.settings, table)
    ins = insert(table)  # built once, each row its parameters: the fast form the README gives for repeated inserts
    behind_floor = DesignFloor(sync.settings, table, postgres=False)
    variants: dict[str, Any] = {
        "raw drivers": raw,
        FLOOR: floor,
        BEHIND_FLOOR: behind_floor,
        "dual (relay on)": lambda row: sync.execute(ins, row),
    }
    variants["dual, write-behind"] = lambda row: behind.execute(ins, row)
    try:
        for w in writer_counts:
            per_round = max(w, writes // RUNS)
            lat: dict[str, list[float]] = {k: [] for k in variants}
            att = dict.fromkeys(variants, 0)
            rounds: list[dict[str, dict[str, float]]] = []
            parts = {k: [0.0, 0.0] for k in PARTS}
            for _ in range(RUNS):
                this: dict[str, dict[str, float]] = {}
                for name, op in variants.items():
                    data = rows(table, per_round, start=next_id)
                    next_id += per_round
                    before = _sums() if name == "dual (relay on)" else None
                    got, attempts, wall = run_workers(w, data, op)
                    if before is not None:
                        after = _sums()
                        for k in PARTS:
                            parts[k][0] += after[k][0] - before[k][0]
                            parts[k][1] += after[k][1] - before[k][1]
                    lat[name] += got
                    att[name] += attempts
                    s = summarize(got, attempts)
                    this[name] = {"p99_ms": s["p99_ms"], "median_ms": s["median_ms"], "per_s": len(got) / wall}
                rounds.append(this)
            out["per_run"].append({"writers": w, "rounds": rounds})
            for k, v in lat.items():
                s = summarize(v, att[k])
                s.update(variant=k, writers=w, writes_per_s=round(median([r[k]["per_s"] for r in rounds]), 1))
                out["results"].append(s)
            out.setdefault("floor", []).extend(_floor(w, rounds, name) for name in FLOORS)
            for name in variants:
                if name == "raw drivers" or name in FLOORS:  # a floor is a reference, not a goal's subject
                    continue
                out["goals"] += _goals(name, w, rounds, parts if name == "dual (relay on)" else None, lat[name])
            log(
                f"  overhead writers={w}: "
                + ", ".join(f"{k} p99 {median([r[k]['p99_ms'] for r in rounds]):.2f} ms" for k in variants)
            )
        out["write_behind"] = _converged(behind, replayer, table)
    finally:
        raw.close()
        floor.close()
        behind_floor.close()
        sync.close()
        behind.close()
        if replayer.poll() is None:
            replayer.kill()
    return out


def _floor(w: int, rounds: list[dict[str, dict[str, float]]], name: str = FLOOR) -> dict[str, Any]:
    """A floor's throughput and p99 as ratios to the raw drivers' (median over the rounds): what the path
    it stands for could reach with no framework cost at all."""
    thr = [ratio(r[name]["per_s"], r["raw drivers"]["per_s"]) for r in rounds]
    p99 = [ratio(r[name]["p99_ms"], r["raw drivers"]["p99_ms"]) for r in rounds]
    return {
        "floor": name,
        "of": FLOORS[name],
        "writers": w,
        "throughput_ratio": median(thr),
        "throughput_spread": [min(thr), max(thr)],
        "p99_ratio": median(p99),
        "p99_spread": [min(p99), max(p99)],
    }


def _goals(name: str, w: int, rounds: list[dict[str, dict[str, float]]], parts: Any, lat: list[float]) -> list[Any]:
    base = "raw drivers"
    p99 = goal(
        f"{name}: p99 with {w} writer(s)", section="overhead", target=P99_GOALS.get(w, 1.5), higher_is_better=False,
        baseline="p99 of one SQLite insert + one Postgres insert through the raw drivers (sqlite3, psycopg2)",
        ratios=[ratio(r[name]["p99_ms"], r[base]["p99_ms"]) for r in rounds],
        value=median([r[name]["p99_ms"] for r in rounds]), baseline_value=median([r[base]["p99_ms"] for r in rounds]),
        unit="ms", writers=w, variant=name,
        p50_ratio=ratio(median([r[name]["median_ms"] for r in rounds]), median([r[base]["median_ms"] for r in rounds])),
    )  # fmt: skip
    if parts is not None:
        p99["breakdown"] = _breakdown(parts, 1000 * sum(lat) / len(lat) if lat else 0.0)
    thr = goal(
        f"{name}: throughput with {w} writer(s)", section="overhead", target=THROUGHPUT_GOAL, higher_is_better=True,
        baseline="writes/s of the raw drivers (SQLite then Postgres), same writers",
        ratios=[ratio(r[name]["per_s"], r[base]["per_s"]) for r in rounds],
        value=median([r[name]["per_s"] for r in rounds]), baseline_value=median([r[base]["per_s"] for r in rounds]),
        unit="writes/s", writers=w, variant=name,
    )  # fmt: skip
    return [p99, thr]


def _replay_worker(dw: Any) -> Any:
    from dualwrite.bench.replay_bench import _workers

    (proc,) = _workers(dw.settings, "overhead-wb", 1, mode="daemon")
    return proc


def _converged(dw: Any, proc: Any, table: Any, timeout: float = 120) -> dict[str, Any]:
    """After the write-behind writes: how long until the replay worker has applied them all (the relay
    publishes, the worker applies), and whether Postgres then holds every row SQLite holds."""
    from sqlalchemy import func, select

    from dualwrite.bench.replay_bench import _stop

    def counts() -> dict[str, int]:
        out = {}
        for side in ("sqlite", "postgres"):
            with dw.backends.read_engine(side).connect() as conn:
                out[side] = int(conn.execute(select(func.count()).select_from(table)).scalar() or 0)
        return out

    t0 = time.monotonic()
    while (got := counts())["sqlite"] != got["postgres"] and time.monotonic() - t0 < timeout:
        time.sleep(0.05)
    waited = time.monotonic() - t0
    report = _stop(proc)
    counts_ = got
    return {
        "seconds_to_applied_after_last_write": round(waited, 3),
        "rows_sqlite": counts_["sqlite"],
        "rows_postgres": counts_["postgres"],
        "converged": counts_["sqlite"] == counts_["postgres"],
        "replayed": report["stats"],
    }
