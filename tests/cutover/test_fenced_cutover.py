"""The write fence under live traffic (issue 15): an application that is not the demo, as three separate
writer processes (inserts, updates, deletes; ORM and Core; shadow reads) at a steady few hundred
transactions per second in total, and the operator's CLI in a fourth process. Every flip of the cutover
and a rollback goes through on its FIRST try (no --postpone): the fence holds the writes for a moment
while the outbox is relayed and the replay catches up, instead of racing them. No application write
fails, and the writers' logs, SQLite and Postgres agree row for row.

`DW_SOAK_RUNS=20 pytest --soak tests/cutover/test_fenced_cutover.py -k soak` runs the whole of it 20 times.

A writer SIGKILLed while fenced (or just before, its heartbeat still fresh) holds the others no longer
than the fence timeout, and the flip either goes through or names that instance; after the heartbeat
expires the same flip goes through.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from dualwrite.cutover.flip import rollback
from dualwrite.cutover.gate import GateConfig, backfill_complete, replay_lag, shadow_mismatch_rate
from dualwrite.engines import Backends, sqlite_engine
from dualwrite.fence import EXPIRY_SECONDS, live_members
from dualwrite.redis_keys import fence_key
from dualwrite.testing import prepared_writer
from tests.conftest import connection_args
from tests.userapp.compare import differences
from tests.userapp.fleet import ROOT, Fleet, env
from tests.userapp.models import Base
from tests.userapp.operator import METADATA, dualwrite, start_daemon, stop_daemon, wait
from tests.userapp.writer import tables

RATE = 80  # per writer: 240 transactions per second in total
FENCE_TIMEOUT = 0.5  # the default
SOAK_RUNS = int(os.environ.get("DW_SOAK_RUNS", "20"))
PER_PHASE = 15  # transactions per writer in each phase after its flip


def _flip(conn: list[str], tmp: Path, *args: str, name: str) -> dict[str, Any]:
    """One CLI flip (or rollback), which must go through the first time; its --report."""
    report = tmp / f"{name}.json"
    command = ["cutover", *args] if args and args[0] == "rollback" else ["cutover", "flip", *args]
    proc = dualwrite(*command, *conn, *METADATA, "--report", str(report))
    with (tmp / "flips.log").open("a") as log:  # every flip's output, for a run that failed
        log.write(f"== {name}: exit {proc.returncode}\n{proc.stdout}{proc.stderr}\n")
    assert proc.returncode == 0, f"{name}: exit {proc.returncode} on the first try\n{proc.stdout}\n{proc.stderr}"
    assert "routing: primary" in proc.stdout and "next:" in proc.stdout, proc.stdout
    return json.loads(report.read_text())


def fenced_cutover(settings, tmp: Path) -> dict[str, dict[str, Any]]:  # type: ignore[no-untyped-def]
    """The whole cutover and a rollback under three writer processes; each flip's fence summary."""
    conn = connection_args(settings)
    app_db = sqlite_engine(settings.sqlite_url)
    Base.metadata.create_all(app_db)
    app_db.dispose()
    assert dualwrite("init", *conn, *METADATA, "--create-tables").returncode == 0
    backends = Backends(settings)
    app = tables()
    fleet = Fleet(tmp)
    daemon = None
    fences: dict[str, dict[str, Any]] = {}
    try:
        fleet.start(settings, count=3, rate=RATE, reads=0.5, shadow=100, population=30, documents=0.05)
        fleet.wait_committed(50, timeout=120)
        wait("three fence members", lambda: len(live_members(backends.redis, settings.namespace)) >= 3, 30)

        _flip(conn, tmp, name="dual_write")
        daemon = start_daemon(settings, tmp, "--chunk-size", "200")
        wait("every table copied", lambda: backfill_complete(backends, app, GateConfig()).ok, 120, 0.5)
        _flip(conn, tmp, name="shadow")
        verify = tmp / "verify.json"
        wait("shadow comparisons", lambda: shadow_mismatch_rate(backends, app, GateConfig()).ok, 120, 0.5)
        proc = dualwrite("verify", *conn, *METADATA, "--report", str(verify))
        assert proc.returncode == 0 and json.loads(verify.read_text())["clean"], proc.stdout + proc.stderr
        wait("comparisons since the verify", lambda: shadow_mismatch_rate(backends, app, GateConfig()).ok, 120, 0.5)
        for name in ("postgres_reads", "postgres_primary"):
            fences[name] = _flip(conn, tmp, name=name)["fence"]
            at = fleet.committed()
            fleet.wait_committed(PER_PHASE, more_than=at, timeout=120)
        fences["rollback"] = _flip(conn, tmp, "rollback", "--reason", "drill", name="rollback")["fence"]
        at = fleet.committed()
        fleet.wait_committed(PER_PHASE, more_than=at, timeout=120)
        for name in ("postgres_reads", "postgres_primary", "postgres"):
            fences[f"{name} again" if name != "postgres" else name] = _flip(conn, tmp, name=name)["fence"]
            at = fleet.committed()
            fleet.wait_committed(PER_PHASE, more_than=at, timeout=120)
        fleet.stop()
        assert fleet.errors() == {}, fleet.errors()  # no application write failed, at any flip
        assert fleet.total("read_errors") == 0 and fleet.total("read_disagreements") == 0, fleet.stats()
        for name, fence in fences.items():
            assert fence is not None and fence["missing"] == [] and len(fence["acknowledged"]) >= 3, (name, fence)
            assert fence["pause_max_seconds"] <= FENCE_TIMEOUT + 0.1, (name, fence)
        state = fleet.state(truth=backends.postgres)
        assert differences(state, backends.postgres, "postgres") == []
        wait("the replay to bring SQLite up to date", lambda: not differences(state, backends.sqlite_read), 90, 0.5)
        phases = {p for s in fleet.stats().values() for p in s["phases"]}
        assert {"sqlite", "dual_write", "shadow", "postgres_reads", "postgres_primary", "postgres"} <= phases
        elapsed = {n: round(time.time() - s["started_at"]) for n, s in fleet.stats().items()}
        rate = fleet.total("committed") / max(elapsed.values())
        print(f"\nwriters: {fleet.total('committed')} transactions, {rate:.0f}/s in total")
        for name, f in fences.items():
            print(
                f"{name:24} held {f['held_seconds'] * 1000:6.1f} ms, {f['writes_held']:3d} write(s) paused: "
                f"p50 {f['pause_p50_seconds'] * 1000:5.1f} ms, p99 {f['pause_p99_seconds'] * 1000:5.1f} ms, "
                f"max {f['pause_max_seconds'] * 1000:5.1f} ms; attempt(s) {f['attempts']}, steps {f['steps_seconds']}"
            )
        return fences
    finally:
        fleet.kill()
        stop_daemon(daemon)
        backends.close()


@pytest.mark.timeout(900)  # about a minute on a quiet machine; minutes on a loaded 2-core one
def test_every_flip_goes_through_first_time_under_three_writer_processes(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    fenced_cutover(settings, tmp_path)


@pytest.mark.soak
@pytest.mark.timeout(900)
@pytest.mark.parametrize("run", range(SOAK_RUNS))
def test_soak_fenced_cutover(settings, tmp_path: Path, run: int) -> None:  # type: ignore[no-untyped-def]
    fenced_cutover(settings, tmp_path)


@pytest.mark.timeout(900)
def test_a_writer_killed_while_fenced_holds_nobody_past_the_timeout(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """postgres_reads <-> shadow (the read source moves: fenced) with a replay running, three writers."""
    timeout = 1.0
    conn = connection_args(settings)
    prepared_writer(settings, tables(), phase="postgres_reads").close()
    backends = Backends(settings)
    fleet = Fleet(tmp_path)
    daemon = None
    try:
        procs = fleet.start(settings, count=3, rate=50, population=20, documents=0.0)
        fleet.wait_committed(20, timeout=120)
        daemon = start_daemon(settings, tmp_path, "--chunk-size", "200")
        members = lambda: live_members(backends.redis, settings.namespace)  # noqa: E731
        wait("three fence members", lambda: len(members()) >= 3, 30)
        app = tables()
        wait("the replay to keep up", lambda: replay_lag(backends, app, GateConfig(max_replay_lag=100)).ok, 120, 0.2)
        fenced = ["cutover", "rollback", *conn, *METADATA, "--fence-timeout", str(timeout)]

        # 1. Killed just before the flip: its heartbeat is still fresh, so the flip waits for it, then
        # lifts the fence at its bound and names it; the others were held no longer than the timeout.
        victim = procs[0]
        victim.popen.send_signal(signal.SIGKILL)
        victim.popen.wait()
        # in this process: a CLI would take longer to start than the heartbeat lives on a loaded machine
        out = rollback(backends, app, fence_timeout=timeout, fence_attempts=1)  # no retry: it must be named
        assert not out.moved and f":{victim.popen.pid}:" in out.message, out.message
        assert "did not acknowledge the fence" in out.message, out.message
        assert backends.phases.current(fresh=True).name == "postgres_reads"
        fence = out.fence.to_dict()
        assert fence["missing"] and all(f":{victim.popen.pid}:" in m for m in fence["missing"]), fence
        assert fence["pause_max_seconds"] <= timeout + 0.1, fence
        # after its heartbeat expired, the same flip goes through
        wait("the killed writer's heartbeat to expire", lambda: len(members()) == 2, EXPIRY_SECONDS + 10)
        proc = dualwrite(*fenced)
        assert proc.returncode == 0 and "postgres_reads -> shadow" in proc.stdout, proc.stdout + proc.stderr

        # 2. Killed while the fence stands (it may have acknowledged already, or not).
        assert dualwrite("cutover", "flip", *conn, *METADATA, "--force", "--reason", "setup").returncode == 0
        victim = procs[1]
        flipper = subprocess.Popen(
            [sys.executable, "-m", "dualwrite", *fenced, "--report", str(tmp_path / "killed.json")],
            cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        wait("the fence", lambda: backends.redis.exists(fence_key(settings.namespace)), 60, 0.001)
        victim.popen.send_signal(signal.SIGKILL)
        victim.popen.wait()
        text, _ = flipper.communicate(timeout=60)
        out = json.loads((tmp_path / "killed.json").read_text())
        fence = out["fence"]
        assert fence["pause_max_seconds"] <= timeout + 0.1, fence
        if out["moved"]:  # it had acknowledged before it died
            assert out["phase"] == "shadow" and fence["missing"] == [], text
        else:
            assert out["phase"] == "postgres_reads" and f":{victim.popen.pid}:" in text, text
        survivor = procs[2]
        at = fleet.committed()
        fleet.procs = [survivor]  # the dead ones' stats stay as they were
        fleet.wait_committed(20, more_than=at, timeout=60)
        fleet.stop()
        stats = survivor.read_stats()
        assert stats["errors"] == 0, stats
        # its longest transaction: the fence's hold at most, plus the transaction itself on a busy machine
        assert stats["max_ms"] < (timeout + 1.5) * 1000, stats
    finally:
        fleet.kill()
        stop_daemon(daemon)
        backends.close()
