"""Backfill progress metrics come from the checkpoints every worker shares, not from one process's counters,
and an operator's pause has its own metric (the stall alert ignores a paused copy: alerts.test.yml)."""

from __future__ import annotations

import re
import time

from tests.backfill.support import META, get, invoke, seed, sigterm, spawn
from tests.conftest import connection_args
from tests.servers import free_port


def _metric(body: str, name: str) -> float | None:
    m = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", body, re.M)
    return float(m[1]) if m else None


def _wait_metric(url: str, name: str, want: float, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    body = ""
    while time.monotonic() < deadline:
        try:
            code, body = get(url)
        except OSError:  # not listening yet
            code = 0
        if code == 200 and _metric(body, name) == want:
            return body
        time.sleep(0.2)
    raise AssertionError(f"{name} never became {want}; last seen {_metric(body, name)}")


def test_a_resumed_daemon_exports_every_workers_rows_and_a_pause_as_a_pause(dw, settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    seed(dw, 150)
    c = connection_args(settings)
    r = invoke("backfill", "run", *c, *META, "--tables", "bf_accounts", "--no-replay", "--chunk-size", "40",
               "--rejects", str(tmp_path / "rej.jsonl"))  # fmt: skip
    assert r.exit_code == 0, r.output  # another worker copied bf_accounts entirely, then stopped
    port = free_port()
    proc = spawn(settings, "--daemon", "--metrics-port", str(port), "--chunk-size", "40",
                 "--rejects", str(tmp_path / "rej2.jsonl"), "--consumer", "w2")  # fmt: skip
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        # this process copied none of bf_accounts; the table's progress is still 150 of 150 (it was 0 of 150)
        body = _wait_metric(url, 'dualwrite_backfill_rows_total{table="bf_accounts"}', 150.0)
        assert _metric(body, 'dualwrite_backfill_rows_expected{table="bf_accounts"}') == 150.0
        body = _wait_metric(url, 'dualwrite_backfill_rows_total{table="bf_tags"}', 150.0)
        assert _metric(body, "dualwrite_backfill_paused") == 0.0
        assert invoke("backfill", "set", *c, "--pause").exit_code == 0
        _wait_metric(url, "dualwrite_backfill_paused", 1.0)  # while replaying, from the live limits
        assert invoke("backfill", "set", *c, "--resume").exit_code == 0
        _wait_metric(url, "dualwrite_backfill_paused", 0.0)
        out = sigterm(proc, 60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
