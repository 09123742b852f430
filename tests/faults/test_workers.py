"""Worker processes killed with SIGKILL: a backfill worker mid-copy (1) and a replay worker mid-batch (2)."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from dualwrite.backfill import checkpoint as ckpt
from dualwrite.backfill.copier import Copier
from dualwrite.redis_keys import stream_key
from dualwrite.settings import Settings
from dualwrite.stream.relay import Relay
from dualwrite.testing import prepared_writer
from tests.core.support import TABLES, catalog
from tests.faults.conftest import SEEDS, SOAK_SEEDS, Collector, PrivatePostgres, count_rows, heal_and_verify
from tests.faults.workers import BACKFILL_CHILD, REPLAY_CHILD, child, kill, killed_then_finished, spawn, write_history
from tests.faults.workload import Workload


# -- (1) backfill worker killed mid-copy, repeatedly ----------------------------------------------------
def _backfill_kills(
    fsettings: Settings, collector: Collector, tmp_path: Path, seed: int, n_rows: int, kills: int
) -> None:
    rng = random.Random(seed)
    with prepared_writer(fsettings, catalog(), phase="sqlite") as dw:
        write_history(dw, n_rows)
        script, args = child(tmp_path, "backfill_child.py", BACKFILL_CHILD, fsettings)
        killed_mid, t0 = killed_then_finished(script, args, "9", kills, rng, (0.02, 0.4), timeout=120)
        with dw.backends.postgres.connect() as conn:
            for t in TABLES:
                cp = ckpt.load(conn, t.name)
                assert cp.status == "done"
                assert cp.rows_copied == count_rows(dw.backends.sqlite_read, t)  # totals exact: no chunk counted twice
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
def _replaykill(fsettings: Settings, collector: Collector, tmp_path: Path, seed: int, steps: int) -> None:
    rng = random.Random(seed)
    with prepared_writer(fsettings, catalog(), phase="dual_write") as dw:
        dw._apply_secondary = lambda *_a, **_k: None  # type: ignore[method-assign]  # Postgres falls behind
        wl = Workload(dw, seed)
        during = wl.run(steps)
        assert Relay.for_backends(dw.backends).drain(timeout=20)
        script, args = child(tmp_path, "replay_child.py", REPLAY_CHILD, fsettings)
        batch = 10
        # killed before the batch reached Postgres, or after it committed there but before its XACK
        proc = spawn(script, args, str(rng.randrange(1, 4)), str(batch), rng.choice(["read", "applied"]))
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline().split()
            assert line and line[0] == "MIDBATCH", line
        finally:
            assert kill(proc)
        key = stream_key(fsettings.namespace)
        pending = dw.backends.redis.xpending(key, "backfill")
        assert pending["pending"] >= 1  # the killed consumer's batch is pending, not acked
        consumers = {c["name"].decode() if isinstance(c["name"], bytes) else c["name"]: c for c in pending["consumers"]}
        assert "doomed" in consumers
        t0 = time.monotonic()
        out = heal_and_verify(dw, TABLES, since=t0)  # another consumer reclaims them (XAUTOCLAIM)
        assert dw.backends.redis.xpending(key, "backfill")["pending"] == 0
        # each fault records its own row through the shared collector.healed: alike in shape, other facts
        collector.healed(
            "replay worker SIGKILL mid-batch",
            out,
            rows_during_fault=during,
            note="pending entries reclaimed by another consumer",
        )


@pytest.mark.parametrize("seed", SEEDS)
def test_replay_worker_sigkill(
    fsettings: Settings, pg: PrivatePostgres, collector: Collector, tmp_path: Path, seed: int
) -> None:
    _replaykill(fsettings, collector, tmp_path, seed, 40)


@pytest.mark.soak
@pytest.mark.parametrize("seed", SOAK_SEEDS)
def test_replay_worker_sigkill_soak(
    fsettings: Settings, pg: PrivatePostgres, collector: Collector, tmp_path: Path, seed: int
) -> None:
    _replaykill(fsettings, collector, tmp_path, seed, 300)
