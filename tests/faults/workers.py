"""The worker processes the fault tests SIGKILL: a backfill child and a replay child run as scripts from a
test's tmp folder on the test's settings, killed by pid; and the history rows only a backfill brings over."""

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

from sqlalchemy import insert

from dualwrite.adapter import DualWriter
from dualwrite.settings import Settings
from tests.core.support import items, pairs, row
from tests.faults.conftest import ROOT

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


def spawn(script: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(script), *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT
    )


def kill(proc: subprocess.Popen[str]) -> bool:
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
        proc = spawn(script, args, chunk)
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "START"
            time.sleep(rng.uniform(*after))
        finally:
            killed_mid += kill(proc)
    return killed_mid


def child(tmp_path: Path, name: str, source: str, settings: Settings) -> tuple[Path, str]:
    """The child `source` written to tmp_path/name, and its first argument: the settings as JSON."""
    script = tmp_path / name
    script.write_text(source.format(root=str(ROOT)))
    return script, json.dumps({k: getattr(settings, k) for k in SETTING_KEYS})


def killed_then_finished(
    script: Path, args: str, chunk: str, kills: int, rng: random.Random, after: tuple[float, float], timeout: float
) -> tuple[int, float]:
    """The backfill child killed `kills` times at random (at least once mid-copy), then run to the end: how many
    died mid-copy, and when the finishing run started (time.monotonic)."""
    killed_mid = kill_at_random(script, args, chunk, kills, rng, after)
    assert killed_mid >= 1, "no worker was killed mid-copy: make the copy longer"
    t0 = time.monotonic()
    proc = spawn(script, args, chunk)
    out_text, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0 and "DONE" in out_text
    return killed_mid, t0


def write_history(dw: DualWriter, n_rows: int) -> None:
    """n_rows items and n_rows // 2 pairs, in batches of 500."""
    for start in range(0, n_rows, 500):
        dw.execute(insert(items).values([row(i, i) for i in range(start, min(n_rows, start + 500))]))
    dw.execute(insert(pairs).values([{"a": i, "b": f"b{i % 7}", "v": i} for i in range(n_rows // 2)]))
