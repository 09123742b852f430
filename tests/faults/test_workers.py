"""Worker processes killed with SIGKILL: a backfill worker mid-copy (1) and a replay worker mid-batch (2)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from sqlalchemy import insert, text

from dualwrite.backfill import checkpoint as ckpt
from dualwrite.backfill.copier import Copier
from dualwrite.redis_keys import stream_key
from dualwrite.settings import Settings
from dualwrite.stream.relay import Relay
from dualwrite.testing import prepared_writer
from tests.core.support import TABLES, catalog, items, pairs, row
from tests.faults.conftest import ROOT, SEEDS, SOAK_SEEDS, Collector, PrivatePostgres, heal_and_verify
from tests.faults.workload import Workload

SETTING_KEYS = ("sqlite_url", "postgres_url", "redis_url", "namespace", "pg_schema", "state_schema")

BACKFILL_CHILD = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, {root!r})
    from dualwrite.backfill.copier import Copier
    from dualwrite.engines import postgres_engine, sqlite_read_engine
    from tests.core.support import TABLES

    s = json.loads(sys.argv[1])
    pg = postgres_engine(s["postgres_url"], s["pg_schema"], state_schema=s["state_schema"], replica=True)
    copier = Copier(sqlite_read_engine(s["sqlite_url"]), pg, chunk_size=int(sys.argv[2]))
    print("START", flush=True)
    copier.copy_tables(list(TABLES))
    print("DONE", flush=True)
    """
)

REPLAY_CHILD = textwrap.dedent(
    """
    import json, sys, time
    sys.path.insert(0, {root!r})
    import dualwrite.apply.rule as A
    from dualwrite.stream.replay import Replayer
    from dualwrite.adapter import DualWriter
    from dualwrite.settings import Settings
    from tests.core.support import catalog

    real, calls, kill_at, applied = A.run_plan_direct, [0], int(sys.argv[2]), sys.argv[4] == "applied"

    def hang_in_batch(engine, plan):  # the kill point: a batch read, applied or not, never acknowledged
        calls[0] += 1
        if calls[0] == kill_at and not applied:
            print("MIDBATCH", len(plan.events), flush=True)
            time.sleep(600)
        result = real(engine, plan)
        if calls[0] == kill_at:
            print("MIDBATCH", len(plan.events), flush=True)
            time.sleep(600)
        return result

    A.run_plan_direct = hang_in_batch  # what the replayer applies a Postgres batch with
    dw = DualWriter(Settings(**json.loads(sys.argv[1])), catalog())
    Replayer(dw.backends, dw.tables, consumer="doomed", batch=int(sys.argv[3]), block_ms=50).run()
    """
)


def _spawn(script: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(script), *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT
    )


def _kill(proc: subprocess.Popen[str]) -> bool:
    """SIGKILL by pid; True if it was still running (killed mid-work)."""
    running = proc.poll() is None
    if running:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    return running


def kill_at_random(
    script: Path, args: str, chunk: str, kills: int, rng: random.Random, after: tuple[float, float]
) -> int:
    """Start the backfill child `kills` times, SIGKILL it a random time after it starts; how many died mid-copy."""
    killed_mid = 0
    for _ in range(kills):
        proc = _spawn(script, args, chunk)
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "START"
            time.sleep(rng.uniform(*after))
        finally:
            killed_mid += _kill(proc)
    return killed_mid


def _count(engine, table) -> int:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM {table.name}")).scalar())


# -- (1) backfill worker killed mid-copy, repeatedly ----------------------------------------------------
def _backfill_kills(
    fsettings: Settings, collector: Collector, tmp_path: Path, seed: int, n_rows: int, kills: int
) -> None:
    rng = random.Random(seed)
    dw = prepared_writer(fsettings, catalog(), phase="sqlite")
    try:
        for start in range(0, n_rows, 500):
            dw.execute(insert(items).values([row(i, i) for i in range(start, min(n_rows, start + 500))]))
        dw.execute(insert(pairs).values([{"a": i, "b": f"b{i % 7}", "v": i} for i in range(n_rows // 2)]))
        script = tmp_path / "backfill_child.py"
        script.write_text(BACKFILL_CHILD.format(root=str(ROOT)))
        args = json.dumps({k: getattr(fsettings, k) for k in SETTING_KEYS})
        killed_mid = kill_at_random(script, args, "9", kills, rng, (0.02, 0.4))
        assert killed_mid >= 1, "no worker was killed mid-copy: make the copy longer"
        t0 = time.monotonic()
        proc = _spawn(script, args, "9")  # the restart completes
        out_text, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0 and "DONE" in out_text
        with dw.backends.postgres.connect() as conn:
            for t in TABLES:
                cp = ckpt.load(conn, t.name)
                assert cp.status == "done"
                assert cp.rows_copied == _count(dw.backends.sqlite_read, t)  # totals exact: no chunk counted twice
                assert cp.rows_rejected == 0
        # a further run is a no-op
        assert all(
            r.status == "done" and r.chunks == 0
            for r in Copier.for_backends(dw.backends).copy_tables(list(TABLES))
        )
        dw.phases.set("dual_write", force=True)
        out = heal_and_verify(dw, TABLES, since=t0)
        collector.healed(
            "backfill worker SIGKILL mid-copy (repeated)",
            out,
            rows_during_fault=n_rows + n_rows // 2,
            note=f"{killed_mid}/{kills} kills mid-copy; checkpoint totals exact",
        )
    finally:
        dw.close()


@pytest.mark.parametrize("seed", SEEDS)
def test_backfill_worker_sigkill(
    fsettings: Settings, pg: PrivatePostgres, collector: Collector, tmp_path: Path, seed: int
) -> None:
    _backfill_kills(fsettings, collector, tmp_path, seed, 1500, 3)


@pytest.mark.soak
@pytest.mark.parametrize("seed", SOAK_SEEDS)
def test_backfill_worker_sigkill_soak(
    fsettings: Settings, pg: PrivatePostgres, collector: Collector, tmp_path: Path, seed: int
) -> None:
    _backfill_kills(fsettings, collector, tmp_path, seed, 6000, 10)


# -- (2) replay worker killed mid-batch ------------------------------------------------------------------
def _replay_kill(fsettings: Settings, collector: Collector, tmp_path: Path, seed: int, steps: int) -> None:
    rng = random.Random(seed)
    dw = prepared_writer(fsettings, catalog(), phase="dual_write")
    try:
        dw._apply_secondary = lambda *_a, **_k: None  # type: ignore[method-assign]  # Postgres falls behind
        wl = Workload(dw, seed)
        during = wl.run(steps)
        assert Relay.for_backends(dw.backends).drain(timeout=20)
        script = tmp_path / "replay_child.py"
        script.write_text(REPLAY_CHILD.format(root=str(ROOT)))
        args = json.dumps({k: getattr(fsettings, k) for k in SETTING_KEYS})
        batch = 10
        # killed before the batch reached Postgres, or after it committed there but before its XACK
        proc = _spawn(script, args, str(rng.randrange(1, 4)), str(batch), rng.choice(["read", "applied"]))
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline().split()
            assert line and line[0] == "MIDBATCH", line
        finally:
            assert _kill(proc)
        key = stream_key(fsettings.namespace)
        pending = dw.backends.redis.xpending(key, "backfill")
        assert pending["pending"] >= 1  # the killed consumer's batch is pending, not acked
        consumers = {c["name"].decode() if isinstance(c["name"], bytes) else c["name"]: c for c in pending["consumers"]}
        assert "doomed" in consumers
        t0 = time.monotonic()
        out = heal_and_verify(dw, TABLES, since=t0)  # another consumer reclaims them (XAUTOCLAIM)
        assert dw.backends.redis.xpending(key, "backfill")["pending"] == 0
        collector.healed(
            "replay worker SIGKILL mid-batch",
            out,
            rows_during_fault=during,
            note="pending entries reclaimed by another consumer",
        )
    finally:
        dw.close()


@pytest.mark.parametrize("seed", SEEDS)
def test_replay_worker_sigkill(
    fsettings: Settings, pg: PrivatePostgres, collector: Collector, tmp_path: Path, seed: int
) -> None:
    _replay_kill(fsettings, collector, tmp_path, seed, 40)


@pytest.mark.soak
@pytest.mark.parametrize("seed", SOAK_SEEDS)
def test_replay_worker_sigkill_soak(
    fsettings: Settings, pg: PrivatePostgres, collector: Collector, tmp_path: Path, seed: int
) -> None:
    _replay_kill(fsettings, collector, tmp_path, seed, 300)
