"""The dashboards on the real main job (issue 7): `dualwrite demo` runs as its own process serving
/metrics; a private Prometheus scrapes it every second; afterwards every panel query of every dashboard,
evaluated over the demo's time range through Prometheus' HTTP API, must have returned series."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import pytest

from tests.conftest import PG_ADMIN_URL, REDIS_TEST_URL, fresh_schema, redis_namespace
from tests.dashboards.promserver import PROMETHEUS, free_port, panel_targets, running_prometheus, substitute


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> dict:  # type: ignore[type-arg]
    if PROMETHEUS is None:
        pytest.skip("prometheus not installed (Debian package 'prometheus'; CI installs it)")
    tmp = tmp_path_factory.mktemp("demo-dash")
    port = free_port()
    uid = uuid.uuid4().hex[:10]
    with fresh_schema(uid) as schema, redis_namespace(uid) as namespace:
        # a non-default loopback address, through --metrics-host: what Prometheus scrapes is what it was told
        with running_prometheus(tmp / "prom", [f"127.0.0.2:{port}"], job="demo") as prom:
            argv = [sys.executable, "-m", "dualwrite", "demo", "--rows", "3000", "--duration", "12"]
            argv += ["--metrics-port", str(port), "--metrics-host", "127.0.0.2"]
            argv += ["--postgres", PG_ADMIN_URL, "--redis", REDIS_TEST_URL]
            argv += ["--namespace", namespace, "--pg-schema", schema, "--sqlite", str(tmp / "app.db")]
            argv += ["--report", str(tmp / "report.json")]
            start = time.time()
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
            end = time.time()
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
            assert prom.scrapes(job="demo") >= 5, "prometheus barely scraped the demo"
            results = {tid: prom.query_range(substitute(expr), start, end) for tid, expr in panel_targets()}
            return {"results": results, "report": json.loads((tmp / "report.json").read_text())}


@pytest.mark.parametrize(("tid", "expr"), panel_targets(), ids=[t for t, _ in panel_targets()])
def test_every_panel_answers_during_the_demo(demo_run: dict, tid: str, expr: str) -> None:  # type: ignore[type-arg]
    series = demo_run["results"][tid]
    assert series and any(s["values"] for s in series), f"{tid}: no series during the demo for {substitute(expr)}"


def test_the_scraped_demo_was_a_clean_cutover(demo_run: dict) -> None:  # type: ignore[type-arg]
    assert demo_run["report"]["ok"] is True
