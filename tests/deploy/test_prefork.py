"""prometheus-client's multiprocess mode under a real pre-forking server: the sample application (its own
models, every write through DualWriter) under gunicorn with three workers. The master's endpoint, and the
/metrics the application mounts, count every worker's writes exactly once; a SIGKILLed worker's counts
stay, its live gauges go; a restart starts from zero (stale files of the last run removed)."""

from __future__ import annotations

import os
import signal
import uuid

from dualwrite.phase import PhaseStore
from tests.deploy.processes import METADATA, cli, gunicorn_app, http, scrape, total, wait_until
from tests.servers import free_port

DUAL_INSERTS = {"backend": "dual", "store": "shop", "op": "insert"}


def _post_accounts(app, n: int, tag: str) -> set[int]:  # type: ignore[no-untyped-def]
    pids = set()
    for i in range(n):
        code, headers, doc = http("POST", f"{app.url}/accounts", {"handle": f"{tag}-{i}", "name": f"Ann {i}"})
        assert code == 201, doc
        pids.add(int(headers["X-Pid"]))
    return pids


def test_every_worker_counted_once_through_kills_and_restarts(settings, rclient, tmp_path) -> None:  # type: ignore[no-untyped-def]
    r = cli(settings, "init", "--create-tables", "--metadata", METADATA)
    assert r.returncode == 0, r.stdout + r.stderr
    PhaseStore(rclient, settings.namespace).set("dual_write", reason="prefork test")
    mp = tmp_path / "multiproc"
    mp.mkdir()
    (mp / "keep-me.txt").write_text("not a metrics file: never removed")
    env = {"PROMETHEUS_MULTIPROC_DIR": str(mp), "SAMPLEAPP_SHADOW_PERCENT": "0"}
    port, mport = free_port(), free_port()
    with gunicorn_app(settings, tmp_path / "run1", host="127.0.0.2", port=port, metrics_port=mport, **env) as app:
        tag = uuid.uuid4().hex[:6]
        pids = _post_accounts(app, 60, tag)
        assert len(pids) >= 2, f"all requests served by one worker: {pids}"
        master, mounted = scrape(f"{app.metrics_url}/metrics"), scrape(f"{app.url}/metrics")
        for samples in (master, mounted):
            assert total(samples, "dualwrite_write_duration_seconds_count", **DUAL_INSERTS) == 60
            assert total(samples, "dualwrite_events_written_total", backend="sqlite") == 60
            assert total(samples, "dualwrite_phase", phase="dual_write") == 1
            assert total(samples, "dualwrite_phase") == 1  # one phase at 1, however many processes
        # a worker SIGKILLed mid-run: gunicorn replaces it; what it counted stays counted
        victim = next(iter(pids & app.worker_pids()))
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: victim not in app.worker_pids() and len(app.worker_pids()) == 3, 30, "worker replaced")
        _post_accounts(app, 15, f"{tag}-b")
        after = scrape(f"{app.metrics_url}/metrics")
        assert total(after, "dualwrite_write_duration_seconds_count", **DUAL_INSERTS) == 75
        assert total(after, "dualwrite_phase", phase="dual_write") == 1
        code, _, doc = http("GET", f"{app.url}/accounts/{tag}-7")
        assert code == 200 and doc["name"] == "Ann 7"
    # the same folder for the next run: its counters start at zero, other files are left alone
    with gunicorn_app(settings, tmp_path / "run2", host="127.0.0.2", port=port, metrics_port=mport, **env) as app:
        _post_accounts(app, 5, f"{tag}-c")
        again = scrape(f"{app.metrics_url}/metrics")
        assert total(again, "dualwrite_write_duration_seconds_count", **DUAL_INSERTS) == 5
    assert (mp / "keep-me.txt").exists()
