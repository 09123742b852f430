"""Every panel query of every dashboard returns data from a real Prometheus scraping a real workload.

A private `prometheus` (random loopback port, 1 s scrapes, tmp config and storage, our alert rules loaded)
scrapes `metrics.serve()` of this test process while a workload runs on the real servers: a DualWriter
cycling through the phases (writes, reads, relay publishing, one secondary-apply failure from a drifted
Postgres unique key), a ShadowReader comparing reads, the cutover gate, the replayer (which dead-letters
the event the secondary refused) and a throttled backfill copier (one row Postgres refuses, so a reject).
Once every producer has emitted and Prometheus has ≥ 4 scrapes with all of it, each target expression is
queried with Grafana's macros substituted, and must return at least one series.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, func, insert, select, update

from dualwrite import metrics
from dualwrite.settings import Settings
from dualwrite.tables import Tables
from dualwrite.testing import prepared_writer
from tests.conftest import fresh_schema, redis_namespace, settings_for
from tests.dashboards.promserver import PROMETHEUS, Prom, panel_targets, running_prometheus, substitute

md = MetaData()
# this module's own tables: shaped like other suites' Table declarations; other names and types on purpose
items = Table(
    "dash_items",
    md,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("code", String(40), unique=True),
    Column("qty", Integer),
)
legacy = Table(  # rows that predate capture: only the backfill brings them to Postgres
    "dash_legacy",
    md,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("name", String(60)),
)
LEGACY_ROWS = 600


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Prom, int]]:
    """A private Prometheus scraping this process' /metrics every second; killed and removed afterwards."""
    if PROMETHEUS is None:
        pytest.skip("prometheus not installed (Debian package 'prometheus'; CI installs it)")
    server = metrics.serve(0)
    mport = server.port
    try:
        with running_prometheus(tmp_path_factory.mktemp("prometheus"), [f"127.0.0.1:{mport}"]) as prom:
            yield prom, mport
    finally:
        server.close()


@pytest.fixture(scope="module")
def module_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Like tests/conftest.py's `settings`, for the whole module: SQLite file, Postgres schema, Redis prefix."""
    uid = uuid.uuid4().hex[:10]
    with fresh_schema(uid) as schema, redis_namespace(uid) as ns:
        yield settings_for(tmp_path_factory.mktemp("dash") / "app.db", schema, ns)


# --------------------------------------------------------------------------------------------------
class Workload:
    """Background threads driving every metric producer until stopped; errors are kept, not swallowed."""

    def __init__(self, settings: Settings) -> None:
        self.dw = prepared_writer(settings, Tables.of([items, legacy], store="dash"), phase="dual_write", relay=True)
        self.stop = threading.Event()
        self.errors: dict[str, BaseException] = {}
        self.threads: list[threading.Thread] = []
        self.next_id = 1
        self.cycles = 0  # app loop iterations (each ends with a gate check)
        self.throttled = 0  # throttle waits of the copier
        self.reader: Any = None
        # Pre-capture rows, written to SQLite directly; one has a NUL byte Postgres refuses (a backfill reject).
        with self.dw.backends.sqlite.begin() as conn:
            conn.execute(
                insert(legacy),
                [{"id": i, "name": f"legacy {i}" if i != 7 else "bad\x00name"} for i in range(1, LEGACY_ROWS + 1)],
            )
        # A drifted secondary: Postgres already holds code 'clash', so applying our 'clash' row fails there.
        with self.dw.backends.postgres.begin() as conn:
            conn.execute(insert(items).values(id=1_000_000, code="clash", qty=0))

    def spawn(self, name: str, fn: Callable[[], None]) -> None:
        def run() -> None:
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                self.errors[name] = exc
                raise

        t = threading.Thread(target=run, name=f"dash-{name}", daemon=True)
        t.start()
        self.threads.append(t)

    # -- the application ---------------------------------------------------------------------------
    def app(self) -> None:
        from dualwrite.cutover import gate
        from dualwrite.shadow.reader import ShadowReader

        self.reader = ShadowReader(percentage=100).install(self.dw)
        dw = self.dw
        dw.execute(insert(items).values(id=self.take_id(), code="clash", qty=1))  # the secondary refuses this one
        phases = ["dual_write", "shadow", "postgres_reads", "sqlite"]
        n = 0
        while not self.stop.is_set():
            dw.phases.set(phases[n % len(phases)], force=True, reason="dashboards test workload")
            for _ in range(5):
                i = self.take_id()
                dw.execute(insert(items).values(id=i, code=f"c{i}", qty=i))
                dw.execute(update(items).where(items.c.id == i).values(qty=i + 1))
                dw.read("dash", "item_by_id", lambda c, i=i: c.execute(select(items).where(items.c.id == i)).all())
                dw.read("dash", "legacy_count", lambda c: c.execute(select(func.count()).select_from(legacy)).scalar())
            gate.check(dw.backends, dw.tables, target="postgres_reads")
            gate.export(dw.backends, dw.tables)  # as the backfill daemon does every few seconds
            n += 1
            self.cycles = n
            time.sleep(0.05)

    def take_id(self) -> int:
        self.next_id += 1
        return self.next_id

    # -- the backfill and the replayer ---------------------------------------------------------------
    def copier(self) -> None:
        from dualwrite.backfill.copier import Copier
        from dualwrite.backfill.throttle import TokenBucket

        work = self

        class CountingBucket(TokenBucket):
            def take(self, n: int, stop: Callable[[], bool] = lambda: False) -> None:
                super().take(n, stop)
                if self.rate is not None and self.tokens < 0:
                    work.throttled += 1  # it waited, with dualwrite_throttle_active{reason="rate"} at 1

        c = Copier(
            self.dw.backends.sqlite_read,
            self.dw.backends.postgres_apply,
            chunk_size=50,
            throttle=CountingBucket(100),  # 100 rows/s: the copy runs for seconds and throttles between chunks
            should_stop=self.stop.is_set,
        )
        c.copy_tables([legacy])
        # then the live table, unthrottled (it keeps growing): every captured table is copied, so the gate's
        # backfill_complete passes
        Copier.for_backends(self.dw.backends, chunk_size=500, should_stop=self.stop.is_set).copy_tables([items])

    def replayer(self) -> None:
        from dualwrite.stream.replay import Replayer

        Replayer(self.dw.backends, self.dw.tables, block_ms=100, claim_idle_ms=1000).run(should_stop=self.stop.is_set)

    def start(self) -> None:
        self.spawn("app (DualWriter, ShadowReader, gate)", self.app)
        self.spawn("backfill copier", self.copier)
        self.spawn("replayer", self.replayer)

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=10)
        if self.reader is not None:
            self.reader.close(wait=True)
        self.dw.close()


# Samples (in this process) that each producer must raise during the workload (other tests in the same
# session share the registry, so growth over the value at the start counts, not mere existence).
PRODUCED = {
    "secondary-apply failure (DualWriter)": ("dualwrite_secondary_failures_total", {"store": "dash"}),
    "relay publishing": ("dualwrite_events_published_total", {}),
    "shadow mismatch (ShadowReader)": (
        "dualwrite_shadow_comparisons_total",
        {"store": "dash", "query": "legacy_count", "result": "mismatch"},
    ),
    "gate (shadow.gate)": ("dualwrite_gate_condition", {"condition": "backfill_complete"}),
    "backfill rows (Copier)": ("dualwrite_backfill_rows_total", {"table": "dash_legacy"}),
    "backfill reject (Copier)": ("dualwrite_backfill_rejected_rows_total", {"table": "dash_legacy"}),
    "dead letter (Replayer)": ("dualwrite_dead_letters_total", {"reason": "apply"}),
    "replay applied (Replayer)": ("dualwrite_replay_events_total", {"result": "stale"}),
    "backfill chunks (Copier)": ("dualwrite_backfill_chunk_duration_seconds_count", {"table": "dash_legacy"}),
}


def _value(name: str, labels: dict[str, str]) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture(scope="module")
def results(prometheus: tuple[Prom, int], module_settings: Settings) -> Iterator[dict[str, Any]]:
    """Run the workload, wait for the scrapes, evaluate every panel expression once."""
    prom, _ = prometheus
    work = Workload(module_settings)
    before = {what: _value(n, lb) for what, (n, lb) in PRODUCED.items()}
    work.start()
    try:
        deadline = time.monotonic() + 30
        while True:
            missing = [what for what, (n, lb) in PRODUCED.items() if _value(n, lb) <= before[what]]
            if work.cycles < 2 or work.throttled == 0:  # gate checked, a throttle wait happened
                missing.append("app cycles with gate checks / a throttle wait")
            if not missing or work.errors or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert not work.errors, f"workload failed: {work.errors}"
        assert not missing, f"producers that never emitted within 30 s: {missing}"
        # ≥ 4 scrapes in all, and ≥ 3 after every producer emitted (so each rate window has 2+ samples).
        base = prom.scrapes()
        deadline = time.monotonic() + 15
        while prom.scrapes() < max(4, base + 3):
            assert time.monotonic() < deadline, "prometheus is not scraping"
            time.sleep(0.25)
        up = prom.query('up{job="dualwrite"}')
        assert up and up[0]["value"][1] == "1", up
        out = {"__rules__": prom.get("/api/v1/rules")}
        for tid, expr in panel_targets():
            out[tid] = prom.query(substitute(expr))
        assert not work.errors, f"workload failed: {work.errors}"
        yield out
    finally:
        work.close()


@pytest.mark.timeout(90)
@pytest.mark.parametrize(("tid", "expr"), panel_targets(), ids=[t for t, _ in panel_targets()])
def test_panel_query_returns_series(results: dict[str, Any], tid: str, expr: str) -> None:
    series = results[tid]
    assert len(series) >= 1, f"{tid}: no series for {substitute(expr)}"


def test_alert_rules_evaluate_against_real_metrics(results: dict[str, Any]) -> None:
    rules = [r for g in results["__rules__"]["groups"] for r in g["rules"]]
    assert rules
    for r in rules:
        assert r["health"] in ("ok", "unknown"), r  # unknown: not evaluated yet
        assert not r.get("lastError"), r
