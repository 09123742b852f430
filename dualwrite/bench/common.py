"""Shared pieces of the benchmark: the isolated environment, the representative table, statistics, machine info.

Every run works in its own temp directory (SQLite files), its own Postgres schemas (dropped afterwards) and
its own Redis namespace (keys deleted afterwards), so it never touches an application's data.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Boolean, Column, DateTime, Float, Integer, MetaData, String, Table, Text, create_engine, text

from dualwrite.engines import open_redis
from dualwrite.settings import Settings, load_settings
from dualwrite.tables import Tables

DEFAULT_POSTGRES = os.environ.get("DUALWRITE_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
DEFAULT_REDIS = os.environ.get("DUALWRITE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
STORE = "bench"
TABLE = "bench_rows"


def bench_metadata() -> tuple[MetaData, Table]:
    """A representative application table (~350-byte rows from dualwrite.demo.synth): key, tenant, text, numbers."""
    md = MetaData()
    table = Table(
        TABLE,
        md,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("tenant_id", String(32), nullable=False, index=True),
        Column("title", String(80), nullable=False),
        Column("body", Text, nullable=False),
        Column("summary", String(120)),
        Column("score", Float),
        Column("active", Boolean, nullable=False),
        Column("created_at", DateTime, nullable=False),
    )
    return md, table


def bench_tables(table: Table) -> Tables:
    return Tables.of(table, store=STORE)


# -- statistics ---------------------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); 0.0 for no values."""
    if not values:
        return 0.0
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(q / 100 * len(s) + 0.5)) - 1))
    return s[k]


def summarize(latencies_s: list[float], attempts: int) -> dict[str, float]:
    """Latency summary in milliseconds plus the success rate (successful / attempted)."""
    ms = [x * 1000 for x in latencies_s]
    return {
        "n": len(ms),
        "avg_ms": round(statistics.fmean(ms), 4) if ms else 0.0,
        "median_ms": round(statistics.median(ms), 4) if ms else 0.0,
        "p95_ms": round(percentile(ms, 95), 4),
        "p99_ms": round(percentile(ms, 99), 4),
        "max_ms": round(max(ms), 4) if ms else 0.0,
        "success_rate": round(len(ms) / attempts, 4) if attempts else 1.0,
    }


def ratio(value: float, baseline: float) -> float | None:
    return round(value / baseline, 3) if baseline else None


N = TypeVar("N")


def mirrored(names: Sequence[N]) -> list[tuple[int, N]]:
    """(half, name): every name in order (half 0), then in reverse (half 1). The machine is shared and its load
    drifts within seconds; in one fixed order a drift counts against whatever runs later. Mirrored, every
    name sits on average at the middle, so a linear drift hits the baseline and each variant alike."""
    return [(0, n) for n in names] + [(1, n) for n in reversed(names)]


def run_workers(n_workers: int, items: list[Any], op: Callable[[Any], None]) -> tuple[list[float], int, float]:
    """Split items over n_workers threads, time op(item) for each. Returns (latencies of successes, attempts,
    wall seconds). A failing op counts as attempted, not successful."""
    chunks = [items[i::n_workers] for i in range(n_workers)]
    lat: list[list[float]] = [[] for _ in chunks]
    barrier = threading.Barrier(len(chunks))

    def work(i: int) -> None:
        barrier.wait()
        out = lat[i]
        for item in chunks[i]:
            t0 = time.perf_counter()
            try:
                op(item)
            except Exception:  # noqa: BLE001 - counted as a failure in the success rate
                continue
            out.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(chunks))]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [x for part in lat for x in part], len(items), time.perf_counter() - start


# -- machine and versions -------------------------------------------------------------------------------
def machine_info(postgres_url: str, redis_url: str) -> dict[str, Any]:
    import sqlite3

    import matplotlib
    import psycopg
    import sqlalchemy

    info: dict[str, Any] = {
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "sqlite": sqlite3.sqlite_version,
        "sqlalchemy": sqlalchemy.__version__,
        "psycopg": psycopg.__version__,
        "matplotlib": matplotlib.__version__,
    }
    try:
        eng = create_engine(postgres_url)
        with eng.connect() as conn:
            info["postgres"] = conn.execute(text("SHOW server_version")).scalar()
        eng.dispose()
    except Exception as exc:  # noqa: BLE001
        info["postgres"] = f"unavailable: {exc}"
    try:
        client = open_redis(redis_url)
        info["redis"] = client.info("server").get("redis_version")
        client.close()
    except Exception as exc:  # noqa: BLE001
        info["redis"] = f"unavailable: {exc}"
    try:
        from importlib.metadata import version

        info["dualwrite"] = version("dualwrite")
    except Exception:  # noqa: BLE001
        info["dualwrite"] = "?"
    info["commit"] = source_commit()
    return info


def source_commit() -> str:
    """The commit of the dualwrite source this run measured ('+dirty' with uncommitted changes), or '?'."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "-uno", "--", "dualwrite"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"
    return f"{head}{'+dirty' if dirty else ''}" if head else "?"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def machine_line(info: dict[str, Any]) -> str:
    return (
        f"{info.get('cpu')} x{info.get('cpus')} | Python {info.get('python')} | SQLite {info.get('sqlite')} | "
        f"PostgreSQL {info.get('postgres')} | Redis {info.get('redis')} | SQLAlchemy {info.get('sqlalchemy')} | "
        f"commit {info.get('commit', '?')}"
    )


# -- the isolated environment -----------------------------------------------------------------------------
@dataclass
class BenchEnv:
    """Temp dir, Postgres admin URL and Redis URL of one run; hands out isolated Settings and cleans up."""

    postgres_url: str = DEFAULT_POSTGRES
    redis_url: str = DEFAULT_REDIS
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    schemas: list[str] = field(default_factory=list)
    databases: list[str] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="dwbench-")))

    def admin(self, url: str | None = None) -> Any:
        return create_engine(url or self.postgres_url, isolation_level="AUTOCOMMIT")

    def new_schema(self, label: str) -> str:
        name = self._create("SCHEMA", label, drop_suffix=" CASCADE")
        self.schemas.append(name)
        return name

    def new_database(self, label: str) -> str:
        name = self._create("DATABASE", label)
        self.databases.append(name)
        return name

    def _create(self, kind: str, label: str, drop_suffix: str = "") -> str:
        """A fresh bench_<run>_<label> schema or database (a left-over one of this run is dropped first)."""
        name = f"bench_{self.run_id}_{label}"[:63]
        eng = self.admin()
        with eng.connect() as conn:
            conn.execute(text(f'DROP {kind} IF EXISTS "{name}"{drop_suffix}'))
            conn.execute(text(f'CREATE {kind} "{name}"'))
        eng.dispose()
        return name

    def database_url(self, db: str) -> str:
        from sqlalchemy.engine import make_url

        return make_url(self.postgres_url).set(database=db).render_as_string(hide_password=False)

    def settings(self, label: str) -> Settings:
        """Fresh SQLite file, Postgres schema and Redis namespace for one measurement."""
        ns = f"dwbench:{self.run_id}:{label}"
        self.namespaces.append(ns)
        schema = self.new_schema(label)
        state = f"{schema[:60]}_dw"  # dualwrite's own tables: created on first use, dropped by cleanup()
        self.schemas.append(state)
        return load_settings(
            env={},
            sqlite_url=str(self.tmp / f"{label}.db"),
            postgres_url=self.postgres_url,
            redis_url=self.redis_url,
            namespace=ns,
            pg_schema=schema,
            state_schema=state,
        )

    def cleanup(self) -> None:
        import shutil

        eng = self.admin()
        with eng.connect() as conn:
            for name in self.schemas:
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
            for name in self.databases:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        eng.dispose()
        client = open_redis(self.redis_url)
        for ns in self.namespaces:
            keys = list(client.scan_iter(match=f"{ns}:*", count=1000))
            if keys:
                client.delete(*keys)
        client.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


@contextmanager
def bench_env(postgres_url: str | None = None, redis_url: str | None = None) -> Iterator[BenchEnv]:
    env = BenchEnv(postgres_url or DEFAULT_POSTGRES, redis_url or DEFAULT_REDIS)
    try:
        yield env
    finally:
        env.cleanup()


def rows(table: Table, count: int, start: int = 1) -> list[dict[str, Any]]:
    from dualwrite.demo.synth import generate

    return list(generate(table, count, start=start))
