"""A persistent shadow mismatch under live traffic, compared in a comparator process, as an application we
did not write meets it: two writer processes, started separately, write and read through the adapter with
every read shadow-compared by the out-of-process comparator (`--comparator process`, 100 %), each serving
its own /metrics, neither waiting for its comparisons (`--compare-wait 0`, as an application does not);
`dualwrite backfill run --daemon` copies and replays. In phase `shadow` the test edits one of writer A's
oldest ledger rows straight in Postgres: A reads it on (`ledger_page`, its first ledger rows) but never
writes it again, so no change event repairs it and every re-read finds it still different.

What it proves, read from A's /metrics, its stats file, the CLI's reports and the shadow report:
- (a) the comparisons of that read count "mismatch", never "ignored" (no re-read resolves it), in A's
  /metrics, A's stats and the Redis counts the gate reads; the mismatch sample names the query and the row
  by its class and key (`Ledger[A, 3]: op`);
- (b) meanwhile A's other reads go on being compared (the comparisons settled rise: the mismatch's pending
  re-reads do not hold them up), none fails, and A's reads keep a loose latency bound (the request path
  never waits for a comparison); on a loaded machine the comparator, below the application's priority, may
  fall behind and count some reads "skipped": counted, so still part of every total below;
- (c) A stopped by SIGTERM with comparisons of that read still in flight (re-reads pending): every one is
  counted, as a mismatch, in A's stats and metrics at exit and in the Redis counts (each shadow read counted
  once), A exits 0, its comparator process exited within close()'s bound (not killed) and nothing was lost;
- (d) `dualwrite verify` finds exactly that row (exit 1, ledger and its key, column op) and the flip to
  postgres_reads is refused (exit 1) while it stands;
- (e) `dualwrite verify --tables ledger --fix` repairs it; `dualwrite verify` is clean and the flip goes
  through on B's comparisons since; every write either writer acknowledged is on both sides, exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dualwrite.cutover.gate import GateConfig, backfill_complete
from dualwrite.engines import Backends
from tests.userapp.fleet import Fleet
from tests.userapp.operator import (
    cli_json,
    condition,
    dualwrite,
    finish,
    ledger_on_postgres,
    move,
    ok,
    plant_ledger,
    prepare,
    start_daemon,
    stop_all,
    wait,
)
from tests.userapp.reads import PAGE
from tests.userapp.writer import tables

RATE = 10  # transactions per second per writer, each followed by a read (a fifth of them ledger_page)
PLANTED_N = 3  # the ledger row planted: one of A's first, in every ledger_page A reads
READ_BOUND_MS = 1500  # a loose bound on one request-path read (a SQLite page of 20 rows), not a benchmark
OTHER = ("customer_page", "orders_per_customer")
LEDGER = "ledger_page"
CLOSE_TIMEOUT_S = 10.0  # ComparatorProcess.close(): the comparator is killed after that, its counts lost


def _shadow(samples: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> dict[str, dict[str, int]]:
    """A /metrics scrape's dualwrite_shadow_comparisons_total, by query and result."""
    out: dict[str, dict[str, int]] = {}
    for (name, labels), value in samples.items():
        if name == "dualwrite_shadow_comparisons_total":
            lab = dict(labels)
            out.setdefault(lab["query"], {})[lab["result"]] = int(value)
    return out


def _compared(counts: dict[str, int]) -> int:
    """Every outcome: each sampled read counts once, compared or skipped."""
    return sum(counts.values())


def _settled(counts: dict[str, int]) -> int:
    """The comparisons the comparator settled (not those skipped at the request, over its bound)."""
    return sum(n for result, n in counts.items() if result != "skipped")


@pytest.mark.timeout(600)  # under a minute on a quiet machine
def test_a_persistent_mismatch_is_counted_reported_and_gates_the_cutover_until_repaired(  # type: ignore[no-untyped-def]
    settings, tmp_path: Path
) -> None:
    conn = prepare(settings)
    backends = Backends(settings)
    app, fleet, daemon = tables(), Fleet(tmp_path), None
    schema = settings.pg_schema
    try:
        a, b = fleet.start(
            settings, count=2, rate=RATE, reads=1.0, shadow=100, comparator="process", compare_wait=0,
            metrics_port=0, population=15, documents=0,
        )  # fmt: skip
        fleet.wait_committed(PLANTED_N, timeout=60)
        move(conn, tmp_path, "dual_write", "cutover", "flip")
        daemon = start_daemon(settings, tmp_path, "--chunk-size", "200")
        wait("every table copied", lambda: backfill_complete(backends, app, GateConfig()).ok, 60, 0.3)
        move(conn, tmp_path, "shadow", "cutover", "flip")
        fleet.wait_committed(PAGE + 2, timeout=60)  # A's ledger_page is full: its rows never change again
        wait("A's first ledger rows on Postgres", lambda: ledger_on_postgres(backends, schema, a.name, PAGE))
        wait("A's ledger_page compared", lambda: _shadow(a.scrape()).get(LEDGER, {}).get("match", 0) >= 2, 30)

        key = plant_ledger(backends, schema, a.name, PLANTED_N)
        planted_at = _shadow(a.scrape())

        # (a) counted as a mismatch once its re-reads (0.2, 1, 3 s) all found it still different
        def mismatches() -> int:
            return _shadow(a.scrape()).get(LEDGER, {}).get("mismatch", 0)

        wait("A's persistent mismatches", lambda: mismatches() >= planted_at.get(LEDGER, {}).get("mismatch", 0) + 3, 30)
        first = _shadow(a.scrape())

        # (b) ... while the other reads go on being compared, at the reads' usual latency
        def meanwhile() -> dict[str, dict[str, int]] | None:
            """A's scrape once its other reads settled 5 more comparisons each and its mismatches rose."""
            now = _shadow(a.scrape())
            others = all(_settled(now[q]) >= _settled(first[q]) + 5 for q in OTHER)
            return now if others and now[LEDGER]["mismatch"] > first[LEDGER]["mismatch"] else None

        second = wait("more comparisons of A's reads, mismatches among them", meanwhile, 30)
        assert all(counts.get("error", 0) == 0 for counts in second.values()), second
        assert second[LEDGER].get("ignored", 0) == 0, second  # no re-read ever resolved it
        assert all(counts.get("mismatch", 0) == 0 for q, counts in second.items() if q != LEDGER), second
        assert a.read_stats()["read_max_ms"] < READ_BOUND_MS, a.read_stats()
        report = json.loads(ok(dualwrite("shadow", "report", *conn[conn.index("--postgres") :], "--json")))
        samples = [s for s in report["mismatches"] if s["query"] == LEDGER]
        assert samples and all(s["store"] == "shop" and s["candidate_backend"] == "postgres" for s in samples), report
        rows = {line for s in samples for line in s["rows"].splitlines()}
        assert rows == {f'Ledger["{a.name}", {PLANTED_N}]: op'}, rows  # the class of the table, the key

        # (c) SIGTERM with some of those comparisons in flight (their re-reads pending): each still counted
        (comparator,) = a.comparators()
        before = _shadow(a.scrape())
        down_s = fleet.stop_one(a)
        assert not Path(f"/proc/{comparator}").exists(), comparator
        end = a.read_stats()
        assert end["shadow_close_s"] < CLOSE_TIMEOUT_S, end  # ComparatorProcess.close() kills it after that
        assert "lost" not in a.stderr.read_text() and "Traceback" not in a.stderr.read_text(), a.stderr.read_text()
        final = end["metrics"]["shadow"]
        in_flight = _settled(final[LEDGER]) - _settled(before[LEDGER])
        assert in_flight >= 1 and final[LEDGER]["mismatch"] - before[LEDGER]["mismatch"] == in_flight, (before, final)
        assert final[LEDGER].get("ignored", 0) == 0, final
        for q, n in end["shadow_reads_by_query"].items():  # every shadow read counted once (a flip's may or not)
            assert n <= _compared(final[q]) <= n + end["unsure_reads"], (q, n, final, end["unsure_reads"])
        totals = {r: sum(c.get(r, 0) for c in final.values()) for r in ("match", "mismatch", "ignored", "skipped")}
        assert {k: v for k, v in totals.items() if v} == {k: v for k, v in end["shadow"].items() if v}, (totals, end)
        shadow_counts = json.loads(ok(dualwrite("shadow", "report", *conn[conn.index("--postgres") :], "--json")))
        assert shadow_counts["counts"]["mismatch"] == final[LEDGER]["mismatch"], (shadow_counts["counts"], final)

        # (d) the operator's verify finds exactly that row; the gate stays closed
        found = cli_json(conn, tmp_path, "verify-found", "verify")
        assert found["exit"] == 1 and not found["clean"], found
        assert [t["table"] for t in found["tables"] if not t["clean"]] == ["ledger"], found
        (ledger,) = [t for t in found["tables"] if t["table"] == "ledger"]
        assert ledger["differing"] == [key] and ledger["differing_columns"] == {key: ["op"]}, ledger
        assert not ledger["missing"] and not ledger["extra"], ledger
        refused = cli_json(conn, tmp_path, "flip-refused", "cutover", "flip")
        assert refused["exit"] == 1 and not refused["moved"] and refused["phase"] == "shadow", refused
        assert not condition(refused, "verify_clean")["ok"], refused
        assert not condition(refused, "shadow_mismatch_rate")["ok"], refused

        # (e) the repair, then a clean verify, then the flip on B's comparisons since
        fixed = cli_json(conn, tmp_path, "verify-fix", "verify", "--tables", "ledger", "--fix", "--yes")
        (ledger,) = fixed["tables"]
        assert ledger["differing"] == [key] and ledger["fixed"] == 1, ledger
        clean = cli_json(conn, tmp_path, "verify-clean", "verify")
        assert clean["exit"] == 0 and clean["clean"], clean
        flip = move(
            conn, tmp_path, "postgres_reads", "cutover", "flip", "--postpone", "--deadline", "60", "--poll", "0.2",
            "--min-comparisons", "30",
        )  # fmt: skip
        assert condition(flip, "verify_clean")["ok"] and condition(flip, "shadow_mismatch_rate")["ok"], flip

        finish(fleet, backends, app)  # every acknowledged write on both sides, exactly: the repaired row too
        assert all(c.get("mismatch", 0) == 0 for c in b.read_stats()["metrics"]["shadow"].values()), b.read_stats()
        closed = f"{down_s:.1f}s, close() {end['shadow_close_s']}s"
        print(f"\nA: {final[LEDGER]} on {LEDGER}; {in_flight} settled at its shutdown ({closed})")
    finally:
        rc = stop_all(fleet, daemon, backends)
    assert rc == 0, (tmp_path / "backfill.stderr").read_text()[-3000:]
