"""docker-compose.yml's topology as real processes, since no container engine runs here: the sample
application under gunicorn (two workers, multiprocess metrics) on 127.0.0.2, the backfill daemon on
127.0.0.3, and a Prometheus scraping both with the jobs, rules and config of
dashboards/provisioning/prometheus/prometheus.yml (only the target addresses replaced by those loopback
ones, and a 1 s interval). Users' HTTP traffic runs while the operator's CLI, in its own processes, takes
the cutover sqlite -> dual_write -> shadow -> postgres_reads -> postgres_primary, verifying on the way.

Then every panel query and annotation of every dashboard, evaluated over the run through Prometheus' HTTP
API, must have answered with data; the flip annotations must sit at the flips; the gate's conditions must
come from the worker; and the cutover must have been clean (no failed request, verify identical)."""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import insert

from dualwrite.engines import Backends, sqlite_engine
from dualwrite.redis_keys import stream_key
from dualwrite.settings import Settings
from tests.conftest import fresh_schema, redis_namespace, settings_for
from tests.dashboards.promserver import PROMETHEUS, panel_targets, running_prometheus, substitute
from tests.deploy.processes import ROOT, backfill_daemon, cli, gunicorn_app, http, wait_until
from tests.servers import free_port

yaml = pytest.importorskip("yaml", reason="PyYAML not installed (the dev extra installs it)")
APP_HOST, WORKER_HOST = "127.0.0.2", "127.0.0.3"
HISTORY_ACCOUNTS, ORDERS_EACH = 400, 5
PHASE_SECONDS = 5.0  # of traffic in each phase
COPY_ROWS_PER_SECOND = 600  # the history (2400 rows) takes ~4 s to copy


class Traffic:
    """The shop's users, over HTTP, one request per connection: new accounts, orders put and replaced,
    some deleted, accounts deleted (their orders by cascade), and reads. Pausable; stops by itself after
    `max_s` seconds whatever happens."""

    def __init__(self, base: str, handles: list[str], max_s: float = 240) -> None:
        self.base, self.handles, self.max_s = base, list(handles), max_s
        self.rng = random.Random(20)
        self.codes: Counter[int] = Counter()
        self.failures: list[str] = []
        self.requests = 0
        self._run, self._stop, self._idle = threading.Event(), threading.Event(), threading.Event()
        self._orders: dict[str, int] = {h: ORDERS_EACH for h in handles}
        self._thread = threading.Thread(target=self._loop, name="shop-users", daemon=True)

    def start(self) -> None:
        self._run.set()
        self._thread.start()

    def pause(self) -> None:
        self._run.clear()
        assert self._idle.wait(30), "traffic did not pause"

    def resume(self) -> None:
        self._run.set()

    def stop(self) -> None:
        self._stop.set()
        self._run.set()
        self._thread.join(30)

    def _call(self, method: str, path: str, doc: Any = None) -> Any:
        code, _, body = http(method, f"{self.base}{path}", doc)
        self.codes[code] += 1
        self.requests += 1
        if code not in (200, 201):
            self.failures.append(f"{method} {path} -> {code} {body}")
        return body

    def _loop(self) -> None:
        deadline = time.monotonic() + self.max_s
        i = 0
        while not self._stop.is_set() and time.monotonic() < deadline:
            if not self._run.is_set():
                self._idle.set()
                self._run.wait(1)
                continue
            self._idle.clear()
            i += 1
            handle = self.rng.choice(self.handles)
            if i % 3 == 0:
                new = f"u-{uuid.uuid4().hex[:8]}"
                self._call("POST", "/accounts", {"handle": new, "name": f"Zoë {i} \u2603"})
                self.handles.append(new)
                self._orders[new] = 0
            n = self.rng.randint(1, self._orders[handle] + 1)
            self._orders[handle] = max(self._orders[handle], n)
            items = [{"sku": f"s{i}", "qty": self.rng.randint(1, 9)}]
            self._call("PUT", f"/accounts/{handle}/orders/{n}", {"total": f"{i % 997}.{i % 100:02d}", "items": items})
            if i % 5 == 0:
                self._call("GET", f"/accounts/{handle}")
                self._call("GET", f"/accounts/{handle}/orders")
            if i % 7 == 0:
                self._call("DELETE", f"/accounts/{handle}/orders/{n}")
            if i % 41 == 0 and len(self.handles) > 50:
                gone = self.handles.pop(self.rng.randrange(len(self.handles)))
                self._call("DELETE", f"/accounts/{gone}")
            time.sleep(0.01)
        self._idle.set()


def seed_history(settings: Settings) -> list[str]:
    """The shop's rows from before dualwrite: written to SQLite directly, never captured."""
    from sampleapp.models import accounts, metadata, orders

    engine = sqlite_engine(settings.sqlite_url)
    handles = [f"h-{i:04d}" for i in range(HISTORY_ACCOUNTS)]
    start = datetime(2024, 1, 1, tzinfo=UTC)
    try:
        metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(insert(accounts), [{"handle": h, "name": f"Ann {h}", "created_at": start} for h in handles])
            conn.execute(
                insert(orders),
                [
                    {
                        "account": h,
                        "n": n,
                        "total": Decimal(f"{n}.50"),
                        "items": [{"sku": f"old-{n}", "qty": n}],
                        "note": "première" if n == 1 else None,
                        "placed_at": start + timedelta(minutes=n),
                    }
                    for h in handles
                    for n in range(1, ORDERS_EACH + 1)
                ],
            )
    finally:
        engine.dispose()
    return handles


def scrape_configs(app_metrics: str, worker_metrics: str) -> list[dict[str, Any]]:
    """The provisioned Prometheus config's jobs, each compose service's address replaced by its process'."""
    prom = yaml.safe_load((ROOT / "dashboards/provisioning/prometheus/prometheus.yml").read_text())
    where = {"app:9464": app_metrics, "backfill:9465": worker_metrics}
    jobs = []
    for job in prom["scrape_configs"]:
        targets = [where[t] for sc in job["static_configs"] for t in sc["targets"]]  # KeyError: a target not run
        assert all(t.startswith("127.") for t in targets), targets  # loopback only, ever
        jobs.append({"job_name": job["job_name"], "static_configs": [{"targets": targets}]})
    return jobs


def settle(backends: Backends, tables: Any, timeout: float = 60) -> None:
    """Until the outbox is published and the worker's group has applied and acknowledged everything."""
    from dualwrite.cutover.gate import GateConfig, outbox_drained

    def done() -> bool:
        if not outbox_drained(backends, tables, GateConfig()).ok:
            return False
        groups = backends.redis.xinfo_groups(stream_key(backends.settings.namespace))
        return bool(groups) and all(g.get("lag") == 0 and g.get("pending") == 0 for g in groups)

    wait_until(done, timeout, "outbox published and stream replayed")


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    if PROMETHEUS is None:
        pytest.skip("prometheus not installed (Debian package 'prometheus'; .ci/run installs it)")
    from sampleapp.models import tables

    tmp = tmp_path_factory.mktemp("topology")
    uid = uuid.uuid4().hex[:10]
    with fresh_schema(uid) as schema, redis_namespace(uid) as namespace:
        settings = settings_for(tmp / "app.db", schema, namespace, pool_size=2, max_overflow=2)
        handles = seed_history(settings)
        r = cli(settings, "init", "--create-tables")
        assert r.returncode == 0, r.stdout + r.stderr
        app_port, app_mport, worker_mport = free_port(), free_port(), free_port()
        app_metrics, worker_metrics = f"{APP_HOST}:{app_mport}", f"{WORKER_HOST}:{worker_mport}"
        out: dict[str, Any] = {"app": app_metrics, "worker": worker_metrics, "flips": {}, "verify": []}
        backends = Backends(settings)
        try:
            with (
                gunicorn_app(
                    settings,
                    tmp / "app",
                    host=APP_HOST,
                    port=app_port,
                    metrics_port=app_mport,
                    workers=2,
                    SAMPLEAPP_SHADOW_PERCENT="100",
                ) as app,  # fmt: skip
                running_prometheus(tmp / "prom", scrape_configs=scrape_configs(app_metrics, worker_metrics)) as prom,
            ):
                start = time.time()
                traffic = Traffic(app.url, handles)
                traffic.start()
                time.sleep(2)

                def flip(target: str, *, paused: bool) -> None:
                    if paused:  # as gh-ost's cut-over does: writes wait a moment for the gate
                        traffic.pause()
                        settle(backends, tables)
                    before = time.time()
                    r = cli(settings, "cutover", "flip", "--postpone", "--deadline", "90", "--poll", "0.3")
                    after = time.time()
                    if paused:
                        traffic.resume()
                    assert r.returncode == 0 and f"-> {target}" in r.stdout, r.stdout + r.stderr
                    out["flips"][target] = (before, after)

                def verify() -> None:
                    traffic.pause()
                    settle(backends, tables)
                    r = cli(settings, "verify")
                    traffic.resume()
                    out["verify"].append((r.returncode, r.stdout + r.stderr))

                flip("dual_write", paused=False)
                # throttled as an operator would on a busy Postgres: the copy lasts seconds, so its progress,
                # rate, ETA, chunk latency and throttle panels are scraped while it runs, not only after
                limit = ("--max-rows-per-second", str(COPY_ROWS_PER_SECOND))
                with backfill_daemon(settings, tmp / "worker", host=WORKER_HOST, port=worker_mport, extra=limit):
                    wait_until(lambda: _gate(backends, tables), 90, "backfill complete")
                    flip("shadow", paused=False)
                    time.sleep(PHASE_SECONDS)
                    verify()
                    # under live traffic: the write fence holds the writes for the switch (issue 15), and the
                    # gate counts shadow comparisons since the verify, which the live reads bring
                    flip("postgres_reads", paused=False)
                    time.sleep(PHASE_SECONDS)
                    flip("postgres_primary", paused=False)
                    time.sleep(PHASE_SECONDS)
                    traffic.stop()
                    settle(backends, tables)
                    verify()
                    base = prom.scrapes("dualwrite-backfill")
                    wait_until(lambda: prom.scrapes("dualwrite-backfill") >= base + 3, 15, "three more scrapes")
                    end = time.time()
                    out["range"] = (start, end)
                    out["panels"] = {tid: prom.query_range(substitute(e), start, end) for tid, e in panel_targets()}
                    out["up"] = prom.query("up")
                    out["flip_marks"] = prom.query(
                        substitute(next(e for tid, e in panel_targets() if tid == "overview:annotation:Phase flips"))
                    )
                    out["gate_series"] = prom.query('dualwrite_gate_condition{job=~"dualwrite.*"}')
                    out["phase_now"] = prom.query("max by (job, phase) (dualwrite_phase) == 1")
                    out["rules"] = prom.get("/api/v1/rules")
                out["traffic"] = {
                    "requests": traffic.requests,
                    "codes": dict(traffic.codes),
                    "failures": traffic.failures,
                }
                out["dead_letters"] = backends.redis.xlen(f"{namespace}:changes:dead")
            yield out
        finally:
            backends.close()


def _gate(backends: Backends, tables: Any) -> bool:
    from dualwrite.cutover.gate import GateConfig, backfill_complete

    return backfill_complete(backends, tables, GateConfig()).ok


@pytest.mark.timeout(400)
@pytest.mark.parametrize(("tid", "expr"), panel_targets(), ids=[t for t, _ in panel_targets()])
def test_every_panel_answers_from_the_app_and_the_worker(deployment: dict[str, Any], tid: str, expr: str) -> None:
    series = deployment["panels"][tid]
    finite = [v for s in series for _, v in s["values"] if v not in ("NaN", "+Inf", "-Inf")]
    assert finite, f"{tid}: no number during the cutover for {substitute(expr)} ({len(series)} series)"


def test_prometheus_scraped_both_processes_at_their_addresses(deployment: dict[str, Any]) -> None:
    up = {(s["metric"]["job"], s["metric"]["instance"]): s["value"][1] for s in deployment["up"]}
    assert up == {("dualwrite-app", deployment["app"]): "1", ("dualwrite-backfill", deployment["worker"]): "1"}


def test_the_flip_annotations_sit_at_the_flips(deployment: dict[str, Any]) -> None:
    marks = {s["metric"]["phase"]: float(s["value"][1]) / 1000 for s in deployment["flip_marks"]}
    assert set(marks) >= set(deployment["flips"])
    for phase, (before, after) in deployment["flips"].items():
        assert before - 0.5 <= marks[phase] <= after + 0.5, (phase, marks[phase], before, after)


def test_the_gate_conditions_come_from_the_worker(deployment: dict[str, Any]) -> None:
    from dualwrite.cutover.gate import CHECKS

    series = deployment["gate_series"]
    assert {s["metric"]["instance"] for s in series} == {deployment["worker"]}
    assert {s["metric"]["condition"] for s in series} == set(CHECKS)
    assert {(s["metric"]["job"], s["metric"]["phase"]) for s in deployment["phase_now"]} == {
        ("dualwrite-app", "postgres_primary"),
        ("dualwrite-backfill", "postgres_primary"),
    }


def test_the_alert_rules_evaluate_on_the_real_series(deployment: dict[str, Any]) -> None:
    rules = [r for g in deployment["rules"]["groups"] for r in g["rules"]]
    assert rules and all(r["health"] in ("ok", "unknown") and not r.get("lastError") for r in rules), rules


def test_the_cutover_under_traffic_was_clean(deployment: dict[str, Any]) -> None:
    traffic = deployment["traffic"]
    assert traffic["requests"] > 200 and not traffic["failures"], json.dumps(traffic)[:3000]
    assert [code for code, _ in deployment["verify"]] == [0, 0], deployment["verify"]
    assert deployment["dead_letters"] == 0


def test_no_target_beyond_loopback() -> None:
    jobs = scrape_configs("127.0.0.2:1", "127.0.0.3:2")
    assert [t for j in jobs for sc in j["static_configs"] for t in sc["targets"]] == ["127.0.0.2:1", "127.0.0.3:2"]
