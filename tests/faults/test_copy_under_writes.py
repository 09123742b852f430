"""The backfill's hardest case (issue 4): five writers keep changing history rows while the copy runs, and
the worker is SIGKILLed and restarted at random points; afterwards Postgres equals SQLite row for row."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pytest

from dualwrite.backfill import checkpoint as ckpt
from dualwrite.settings import Settings
from dualwrite.testing import prepared_writer
from tests.core.support import TABLES, catalog
from tests.faults.conftest import SEEDS_AND_SOAK, Collector, heal_and_verify
from tests.faults.workers import BACKFILL_CHILD, child, killed_then_finished, write_history
from tests.faults.workload import Workload

WRITERS = 5


@pytest.mark.parametrize("seed", SEEDS_AND_SOAK)
def test_killed_copy_under_five_writers_converges(
    settings: Settings, collector: Collector, tmp_path: Path, seed: int
) -> None:
    rng = random.Random(seed)
    n_rows = 1500
    dw = prepared_writer(settings, catalog(), phase="sqlite", relay=True)
    stop = threading.Event()
    workloads: list[Workload] = []
    try:
        # history written before dual writes were switched on: only the backfill can bring it over
        write_history(dw, n_rows)
        dw.phases.set("dual_write", force=True)

        for w in range(WRITERS):
            wl = Workload(dw, seed * 100 + w, start=1_000_000 * (w + 1))
            wl.ids = list(range(w, n_rows, WRITERS))  # each writer updates/deletes its share of the history
            workloads.append(wl)

        def write(wl: Workload) -> None:
            while not stop.is_set():
                wl.run_tolerant(1)
                time.sleep(0.002)

        threads = [threading.Thread(target=write, args=(wl,), daemon=True) for wl in workloads]
        for t in threads:
            t.start()

        script, args = child(tmp_path, "backfill_child.py", BACKFILL_CHILD, settings)
        # the last, unkilled run finishes the copy while the writers go on
        killed_mid, t0 = killed_then_finished(script, args, "7", 3, rng, (0.05, 0.6), timeout=180)
        stop.set()
        for t in threads:
            t.join(timeout=30)
        assert not any(wl.errors for wl in workloads), [wl.errors[:1] for wl in workloads]
        written = sum(wl.rows_written for wl in workloads)
        assert written > 50, f"the writers barely wrote ({written} rows): the test proves nothing"
        with dw.backends.postgres.connect() as conn:
            assert all(ckpt.load(conn, t.name).status == "done" for t in TABLES)

        out = heal_and_verify(dw, TABLES, since=t0)
        collector.healed(
            "backfill SIGKILLed mid-copy under 5 live writers",
            out,
            rows_during_fault=written,
            note=f"{killed_mid}/3 kills mid-copy, {written} rows written by {WRITERS} writers during the copy",
        )
    finally:
        stop.set()
        dw.close()
