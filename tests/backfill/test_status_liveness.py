"""`backfill status` tells a SIGKILLed worker from a live one at once (issue 14): the worker's published
state outlives it by up to WORKER_TTL_S, but its liveness lock (leases.py) goes with its connection."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from click.testing import CliRunner

from dualwrite.backfill.throttle import WORKER_TTL_S, live_workers
from dualwrite.cli.main import main
from tests.backfill.support import META, seed, spawn
from tests.conftest import connection_args


def _status(settings, tmp_path: Path) -> tuple[str, dict]:  # type: ignore[no-untyped-def]
    report = tmp_path / "status.json"
    r = CliRunner().invoke(main, ["backfill", "status", *connection_args(settings), *META, "--report", str(report)])
    assert r.exit_code == 0, r.output
    return r.output, json.loads(report.read_text())


def test_a_sigkilled_worker_is_not_listed_as_copying(dw, settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    seed(dw, 400)
    proc = spawn(
        settings, "--no-replay", "--chunk-size", "10", "--max-rows-per-second", "40", "--consumer", "doomed",
        "--rejects", str(tmp_path / "r.jsonl"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            out, doc = _status(settings, tmp_path)
            if any(t["state"] == "copying" and t["done"] > 0 for t in doc["tables"]) and doc["workers"]:
                break
            assert time.monotonic() < deadline, out
            time.sleep(0.2)
        assert [w["worker"] for w in doc["workers"]] == ["doomed"] and "worker doomed: copying" in out
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    killed_at = time.monotonic()
    time.sleep(0.5)  # Postgres notices the closed connection and frees its locks
    assert [w["worker"] for w in live_workers(dw.backends.redis, settings.namespace)] == ["doomed"]  # published
    out, doc = _status(settings, tmp_path)
    assert time.monotonic() - killed_at < WORKER_TTL_S / 2
    assert doc["workers"] == [] and "workers: none running" in out, out  # ...but not alive
    states = {t["table"]: t["state"] for t in doc["tables"]}
    assert "copying" not in states.values() and "stopped" in states.values(), out
