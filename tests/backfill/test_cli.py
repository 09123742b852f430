"""The `dualwrite backfill` commands against the real servers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from sqlalchemy import update

from dualwrite.tables import Tables
from dualwrite.testing import prepared_writer
from tests.backfill.support import META, accounts, assert_equal, invoke, md, seed, sigterm
from tests.conftest import connection_args


def test_run_once_status_reset(dw, settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    seed(dw, 120)
    dw.execute(update(accounts).where(accounts.c.id == 3).values(name="live"))
    from tests.backfill.support import drain_relay

    drain_relay(dw)
    report = tmp_path / "report.json"
    c = connection_args(settings)
    r = invoke("backfill", "run", *c, *META, "--chunk-size", "25", "--report", str(report),
               "--rejects", str(tmp_path / "rej.jsonl"), "--max-rows-per-second", "100000")  # fmt: skip
    assert r.exit_code == 0, r.output
    data = json.loads(report.read_text())
    assert [t["rows_copied"] for t in data["tables"]] == [120, 120, 120]
    assert data["replay"]["applied"] + data["replay"]["stale"] == 1
    assert_equal(dw)
    r = invoke("backfill", "status", *c, *META)
    assert r.exit_code == 0 and "bf_accounts" in r.output and "120/120" in r.output and "done" in r.output
    r = invoke("backfill", "reset", *c)  # not a terminal and no --yes: refused, a usage error
    assert r.exit_code == 2 and "refusing to reset without --yes" in r.output, r.output
    assert "it would clear the backfill progress and delete up to" in r.output, r.output
    r = invoke("backfill", "reset", *c, "--yes")
    assert r.exit_code == 0 and "reset 3" in r.output
    r = invoke("backfill", "deadletters", "list", *c)
    assert r.exit_code == 0 and r.output == ""
    r = invoke("backfill", "deadletters", "redrive", *c, *META)
    assert r.exit_code == 0 and "applied=0" in r.output


def test_sigterm_finishes_and_exits_zero(dw, settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    seed(dw, 50)
    report = tmp_path / "report.json"
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    proc = subprocess.Popen(
        [sys.executable, "-m", "dualwrite", "backfill", "run", "--daemon", *connection_args(settings), "--metadata",
         "tests.backfill.support:md", "--report", str(report), "--rejects", str(tmp_path / "r.jsonl")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not _copied(dw):
        time.sleep(0.1)
    time.sleep(0.3)
    out = sigterm(proc, 30)
    assert proc.returncode == 0, out.decode()
    assert json.loads(report.read_text())["stopped_by_signal"] is True
    assert_equal(dw)


def _copied(dw) -> bool:  # type: ignore[no-untyped-def]
    from dualwrite.backfill import checkpoint as ckpt

    try:
        cps = ckpt.load_all(dw.backends.postgres)
    except Exception:  # noqa: BLE001
        return False
    return len(cps) == 3 and all(c.status == "done" for c in cps.values())


def test_tables_move_in_priority_order_and_none_are_guessed(settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """--metadata naming a Tables moves its stores in priority order (P0, P1, P2; parents before children),
    not in MetaData.sorted_tables' alphabetical order, which would copy archive_records (P2) first; a plain
    MetaData keeps its parents-first order; without --metadata (or --reflect) nothing is guessed."""
    from dualwrite.demo.app import tables as app_tables

    app = app_tables()
    order = app.names()
    pri = [app.get(n).priority for n in order]
    assert pri == sorted(pri) and order[0] == "memory_items"
    for n in order:
        assert all(order.index(p) < order.index(n) for p in app.get(n).parents)
    w = prepared_writer(settings, app, phase="sqlite")  # every store's tables, empty
    try:
        report = tmp_path / "report.json"
        c = connection_args(settings)
        r = invoke("backfill", "run", *c, "--no-replay", "--rejects", str(tmp_path / "r"))
        assert r.exit_code == 2 and "--metadata" in r.output, r.output
        app_meta = ["--metadata", "dualwrite.demo.app:tables"]
        r = invoke(
            "backfill", "run", *c, *app_meta, "--no-replay", "--report", str(report), "--rejects", str(tmp_path / "r")
        )
        assert r.exit_code == 0, r.output
        assert [t["table"] for t in json.loads(report.read_text())["tables"]] == order
        assert Tables.load("tests.backfill.support:md").names() == [t.name for t in md.sorted_tables]
    finally:
        w.close()
