"""Shadow reads compared in a process of their own, a replay daemon, and the operator's CLI, as an
application we did not write runs them: two writer processes, started separately, write and read (ORM
sessions and Core) through the adapter with every read shadow-compared by the out-of-process comparator
(`ShadowReader(comparator="process", percentage=100)`); `dualwrite backfill run --daemon` copies and then
replays the change stream the writers' relays fill; the operator's CLI, in processes of its own, flips
sqlite -> dual_write -> shadow -> postgres_reads and rolls back postgres_reads -> shadow -> dual_write
while the writers go on.

What the gate and the operator see, read through the CLI: no shadow mismatch in any shadow phase; every
sampled read compared or reported skipped (compared = 1 - skipped, as fractions), and the same counts as
the writers' own readers counted; the replay caught up at the end (0 undelivered, 0 pending) and `dualwrite
verify` finds both sides equal. No writer died, none of its writes failed, each of its reads was compared
in the comparator process, and every write it acknowledged is on Postgres (and SQLite), exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dualwrite.cutover.gate import GateConfig, backfill_complete, replay_lag, shadow_mismatch_rate
from dualwrite.engines import Backends
from dualwrite.redis_keys import read_shadow_counts
from tests.userapp.compare import differences
from tests.userapp.fleet import Fleet
from tests.userapp.operator import cli_json, dualwrite, move, ok, prepare, start_daemon, stop_all, wait
from tests.userapp.writer import tables

RATE = 20  # transactions per second per writer; a read after 60% of them, each shadow-compared
PER_PHASE = 15  # transactions per writer in each phase after its flip
OUTCOMES = ("match", "mismatch", "ignored", "error", "skipped")


def _shadow_counts(conn: list[str]) -> dict[str, int]:
    """`dualwrite shadow report --json`: the comparison counts every shadow reader sent to Redis."""
    doc = json.loads(ok(dualwrite("shadow", "report", *conn[conn.index("--postgres") :], "--json")))
    assert not doc["mismatches"], doc["mismatches"]
    return doc["counts"]


def _assert_no_mismatch(conn: list[str], phase: str) -> dict[str, int]:
    counts = _shadow_counts(conn)
    assert counts.get("mismatch", 0) == 0, (phase, counts)
    return counts


@pytest.mark.timeout(600)  # well under a minute on a quiet machine
def test_shadow_reads_in_a_comparator_process_with_a_replay_daemon_through_flips_and_back(  # type: ignore[no-untyped-def]
    settings, tmp_path: Path
) -> None:
    conn = prepare(settings)
    backends = Backends(settings)
    app = tables()
    fleet = Fleet(tmp_path)
    daemon = None
    gate = GateConfig()
    try:
        fleet.start(
            settings, count=2, rate=RATE, reads=0.6, shadow=100, comparator="process", population=20, documents=0.05
        )
        fleet.wait_committed(PER_PHASE, timeout=60)

        def phase_traffic(reads: int = 0) -> None:
            """Each writer commits PER_PHASE more; and the shadow readers `reads` more comparisons."""
            at, counted = fleet.committed(), sum(read_shadow_counts(backends.redis, settings.namespace).values())
            fleet.wait_committed(PER_PHASE, more_than=at, timeout=60)
            total = lambda: sum(read_shadow_counts(backends.redis, settings.namespace).values())  # noqa: E731
            wait(f"{reads} more shadow comparisons", lambda: total() >= counted + reads, 60)

        move(conn, tmp_path, "dual_write", "cutover", "flip")
        daemon = start_daemon(settings, tmp_path, "--chunk-size", "200")
        wait("every table copied", lambda: backfill_complete(backends, app, gate).ok, 60, 0.3)
        move(conn, tmp_path, "shadow", "cutover", "flip")
        wait("enough comparisons for the gate", lambda: shadow_mismatch_rate(backends, app, gate).ok, 60, 0.3)
        _assert_no_mismatch(conn, "shadow")
        for proc in fleet.procs:  # each writer compares in a process of its own, not on its threads
            assert len(proc.comparators()) == 1, (proc.name, proc.stderr.read_text()[-2000:])
        verify = cli_json(conn, tmp_path, "verify-shadow", "verify")
        assert verify["exit"] == 0 and verify["clean"], verify
        # the gate counts comparisons since that verify: the writers' reads go on being compared
        wait("comparisons since the verify", lambda: shadow_mismatch_rate(backends, app, gate).ok, 60, 0.3)
        check = cli_json(conn, tmp_path, "gate-shadow", "cutover", "check")
        (rate,) = [c for c in check["conditions"] if c["name"] == "shadow_mismatch_rate"]
        assert rate["ok"] and rate["value"] == 0 and rate["detail"].startswith("0 mismatch(es)"), check
        move(conn, tmp_path, "postgres_reads", "cutover", "flip", "--postpone", "--deadline", "60", "--poll", "0.2")
        phase_traffic(reads=20)  # reads from Postgres now, compared with SQLite
        _assert_no_mismatch(conn, "postgres_reads")
        move(conn, tmp_path, "shadow", "cutover", "rollback", "--to", "shadow", "--reason", "drill")
        phase_traffic(reads=20)
        _assert_no_mismatch(conn, "shadow, rolled back")
        move(conn, tmp_path, "dual_write", "cutover", "rollback", "--to", "dual_write", "--reason", "drill")
        phase_traffic()
        fleet.check_alive()
        fleet.stop()  # each exits 0 after SIGTERM: none died

        assert fleet.errors() == {}, fleet.errors()  # no write failed, at any flip
        assert fleet.total("read_errors") == 0 and fleet.total("read_disagreements") == 0, fleet.stats()
        stats = fleet.stats()
        local = {name: s["shadow_local_queries"] for name, s in stats.items() if s["shadow_local_queries"]}
        assert local == {}, f"compared on the writers' threads, not in the comparator process: {local}"
        phases = {p for s in stats.values() for p in s["phases"]}
        assert {"sqlite", "dual_write", "shadow", "postgres_reads"} <= phases, phases

        # The replay caught up: nothing undelivered, nothing delivered and unacknowledged (the gate's view).
        wait("the replay to catch up", lambda: replay_lag(backends, app, GateConfig(max_replay_lag=0)).ok, 60, 0.3)
        check = cli_json(conn, tmp_path, "gate-end", "cutover", "check")
        assert check["current"] == "dual_write" and check["target"] == "shadow", check
        (lag,) = [c for c in check["conditions"] if c["name"] == "replay_lag"]
        assert lag["ok"] and lag["value"] == 0 and "0 undelivered + 0 pending" in lag["detail"], lag
        verify = cli_json(conn, tmp_path, "verify-end", "verify")
        assert verify["exit"] == 0 and verify["clean"], verify
        assert verify["mode"] == "full" and {t["table"] for t in verify["tables"]} == set(app.names()), verify
        for t in verify["tables"]:  # every key range's checksums agreed: no row missing, extra or differing
            assert t["clean"] and t["error"] is None and t["sqlite_rows"] == t["postgres_rows"], t

        # Every sampled read was compared or skipped, as the CLI reports it and the writers counted it.
        counts = _assert_no_mismatch(conn, "the end")
        assert set(counts) <= set(OUTCOMES), counts  # no A/A runs, no unknown outcome
        sampled = sum(counts.values())
        compared = counts.get("match", 0) + counts.get("mismatch", 0)
        skipped = counts.get("skipped", 0)
        assert sampled > 0 and compared / sampled == pytest.approx(1 - skipped / sampled), counts
        own = {k: sum(s["shadow"].get(k, 0) for s in stats.values()) for k in OUTCOMES}
        assert {k: v for k, v in own.items() if v} == counts, (own, counts)
        # 100% sampling: one comparison (or skip) per read in a shadow phase; a read across a flip may go either way
        shadow_reads, unsure = fleet.total("shadow_reads"), fleet.total("unsure_reads")
        assert shadow_reads <= sampled <= shadow_reads + unsure, (shadow_reads, unsure, counts)

        # Every write the writers acknowledged is on Postgres, and SQLite, exactly.
        state = fleet.state(truth=backends.postgres)
        assert differences(state, backends.postgres, "postgres") == []
        assert differences(state, backends.sqlite_read, "sqlite") == []
        print(f"\nwriters: {fleet.total('committed')} transactions, {fleet.total('reads')} reads; shadow {counts}")
    finally:
        rc = stop_all(fleet, daemon, backends)
    assert rc == 0, (tmp_path / "backfill.stderr").read_text()[-3000:]
