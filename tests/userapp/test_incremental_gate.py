"""The cutover gate on the incremental re-verify, as an application we did not write runs it: two history
writers (the application's past, before dualwrite writes Postgres) and then two live writers, started
separately, write through the adapter; `dualwrite backfill run --daemon` copies and replays; the operator's
CLI, in processes of its own, flips sqlite -> dual_write -> shadow, runs one full `dualwrite verify` and then
`dualwrite verify --incremental` between further flips while the live writers go on.

What it proves, read from the CLI's --report files:
- each incremental run after a clean verify is clean (exit 0) and compares only the keys the change log
  touched since: more than none, and well under a fifth of the rows the full verify compared;
- the gate's verify_clean condition rests on it and names the full verify it rests on;
- a divergence planted straight into Postgres (a raw UPDATE, bypassing the adapter) is found by the next
  incremental run when its key is one the change log touched since the last clean verify (exit 1, the
  table and key named), and the flip to postgres_reads is refused (exit 1) while it stands;
- an out-of-band edit of a key the change log did not touch is, by design (README: "writes that bypass
  dualwrite are seen by a full verify only"), not seen by an incremental run: it stays clean (exit 0);
  the full verify of that table (`dualwrite verify --tables ledger --fix`, as the next steps print it)
  finds both edits and repairs them, and after its re-verify the flip goes through and the incremental
  runs go on;
- the writers went on throughout: none died, no write failed, and every write they acknowledged is on
  Postgres and SQLite, exactly (so the repair restored the planted rows).

The planted rows are ledger rows (models.Ledger: one per committed transaction, never written again): a
row the writers go on writing would be overwritten by their next image of it (the apply rule lets the
newer version win), healing the divergence at a moment the test cannot know; a ledger row keeps it until
the repair. The touched one is a live writer's ledger row committed after the last clean verify (its
key is in the change log above that verify's watermark); the untouched one is a history writer's first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dualwrite.cutover.gate import GateConfig, backfill_complete
from dualwrite.engines import Backends
from tests.userapp.fleet import Fleet
from tests.userapp.operator import (
    cli_json,
    condition,
    finish,
    ledger_on_postgres,
    move,
    plant_ledger,
    prepare,
    start_daemon,
    stop_all,
    wait,
)
from tests.userapp.writer import tables

HISTORY = 500  # transactions per history writer, as fast as they go, before dual writes are switched on
RATE = 10  # transactions per second per live writer, each followed by a shadow-compared read
PER_STEP = 10  # transactions per live writer between two operator steps
POSTPONED = ("--postpone", "--deadline", "60", "--poll", "0.2")  # until enough comparisons since the verify


def _rows(report: dict[str, Any]) -> int:
    """The SQLite rows a verify compared (of its touched keys, for an incremental one)."""
    return sum(t["sqlite_rows"] for t in report["tables"])


def _table(report: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [t for t in report["tables"] if t["table"] == name]
    return found


@pytest.mark.timeout(600)  # about 40 s on a quiet machine
def test_the_gate_on_incremental_verifies_refuses_a_planted_divergence_until_repaired(  # type: ignore[no-untyped-def]
    settings, tmp_path: Path
) -> None:
    conn = prepare(settings)
    backends = Backends(settings)
    schema = settings.pg_schema
    app = tables()
    fleet = Fleet(tmp_path)
    daemon = None
    try:
        history = fleet.start(settings, count=2, rate=0, max_tx=HISTORY, apis="core", population=40, documents=0)
        live = fleet.start(settings, count=2, rate=RATE, reads=1.0, shadow=100, population=20, documents=0.05)
        fleet.wait_ended(history, timeout=90)

        def traffic() -> dict[str, int]:
            """Each live writer commits PER_STEP more; the counts before."""
            at = fleet.committed()
            fleet.wait_committed(PER_STEP, more_than=at, timeout=60)
            return at

        move(conn, tmp_path, "dual_write", "cutover", "flip")
        daemon = start_daemon(settings, tmp_path, "--chunk-size", "500")
        wait("every table copied", lambda: backfill_complete(backends, app, GateConfig()).ok, 60, 0.3)
        move(conn, tmp_path, "shadow", "cutover", "flip")

        full = cli_json(conn, tmp_path, "verify-full", "verify")
        assert full["exit"] == 0 and full["clean"] and full["mode"] == "full", full
        traffic()
        inc = cli_json(conn, tmp_path, "verify-inc-1", "verify", "--incremental")
        assert inc["exit"] == 0 and inc["clean"] and inc["mode"] == "incremental", inc
        assert inc["base"] == full["at"] and inc["watermark"] > full["watermark"], (inc, full)
        # only the keys the live writers touched since the full verify began: some, and not every row. How
        # many depends on the wall time between the two runs (the writers keep going), so the bound is the
        # touched keys, not a share of the table: a share was exceeded at load 19 (487 of 2288 rows)
        assert 0 < inc["touched"] and 0 < _rows(inc) <= inc["touched"], inc
        assert _rows(inc) < _rows(full), (_rows(inc), _rows(full))

        # The gate rests on the incremental verify, and says on which full verify.
        flip = move(conn, tmp_path, "postgres_reads", "cutover", "flip", *POSTPONED)
        clean = condition(flip, "verify_clean")
        assert clean["ok"] and "incremental" in clean["detail"] and full["at"] in clean["detail"], clean

        # An out-of-band edit of a key the change log did not touch since: no incremental run sees it.
        untouched = plant_ledger(backends, schema, history[0].name, 1)
        traffic()
        blind = cli_json(conn, tmp_path, "verify-inc-2", "verify", "--incremental")
        assert blind["exit"] == 0 and blind["clean"] and blind["mode"] == "incremental", blind
        assert blind["base"] == full["at"] and 0 < _rows(blind) <= blind["touched"], blind
        assert _rows(blind) < _rows(full), (_rows(blind), _rows(full))
        move(conn, tmp_path, "shadow", "cutover", "rollback", "--to", "shadow", "--reason", "drill")

        # An out-of-band edit of a key the change log touched since the last clean verify: found.
        writer = live[0].name
        n = traffic()[writer] + PER_STEP  # counted after the rollback ended, itself after that verify
        wait("the ledger row on Postgres", lambda: ledger_on_postgres(backends, schema, writer, n), 30, 0.1)
        touched = plant_ledger(backends, schema, writer, n)
        found = cli_json(conn, tmp_path, "verify-inc-3", "verify", "--incremental")
        assert found["exit"] == 1 and not found["clean"] and found["mode"] == "incremental", found
        ledger = _table(found, "ledger")
        assert ledger["differing"] == [touched] and ledger["differing_columns"] == {touched: ["op"]}, ledger
        assert not ledger["missing"] and not ledger["extra"], ledger
        assert [t["table"] for t in found["tables"] if not t["clean"]] == ["ledger"], found

        # The gate refuses while it stands.
        refused = cli_json(conn, tmp_path, "flip-refused", "cutover", "flip")
        assert refused["exit"] == 1 and not refused["moved"] and refused["phase"] == "shadow", refused
        failing = condition(refused, "verify_clean")
        assert not failing["ok"] and "differences in ledger" in failing["detail"], failing

        # The repair the next steps print: `verify --tables ledger --fix`, a full verify of that table, finds
        # and fixes both edits; `verify --tables ledger` then; the other tables keep their last results.
        fixed = cli_json(conn, tmp_path, "verify-fix", "verify", "--tables", "ledger", "--fix", "--yes")
        assert fixed["exit"] == 1 and fixed["mode"] == "full", fixed  # it reports what it found and fixed
        (ledger,) = fixed["tables"]
        assert ledger["differing"] == sorted([touched, untouched]) and ledger["fixed"] == 2, ledger
        again = cli_json(conn, tmp_path, "verify-after-fix", "verify", "--tables", "ledger")
        assert again["exit"] == 0 and again["clean"] and [t["table"] for t in again["tables"]] == ["ledger"], again
        flip = move(conn, tmp_path, "postgres_reads", "cutover", "flip", *POSTPONED)
        assert condition(flip, "verify_clean")["ok"], flip
        # and the incremental runs go on from there (from the oldest table result: inc-3's, for all but ledger)
        after = cli_json(conn, tmp_path, "verify-inc-4", "verify", "--incremental")
        assert after["exit"] == 0 and after["clean"] and after["mode"] == "incremental", after
        assert after["base"] == full["at"] and 0 < after["touched"] and _rows(after) < _rows(full), after
        traffic()
        finish(fleet, backends, app)  # every acknowledged write on both sides, exactly: the planted rows too
        print(f"\nrows: full {_rows(full)}, incremental {_rows(inc)}, {_rows(blind)} ({fleet.total('committed')} tx)")
    finally:
        rc = stop_all(fleet, daemon, backends)
    assert rc == 0, (tmp_path / "backfill.stderr").read_text()[-3000:]
