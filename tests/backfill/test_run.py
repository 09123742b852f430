"""`dualwrite backfill run`: selection, summary + report, dry run, daemon with /metrics and /health,
progress on a terminal and in a pipe, and the structured line of a failing chunk."""

from __future__ import annotations

import json
import os
import pty
import time

from sqlalchemy import func, inspect, select, text, update

from dualwrite.backfill import checkpoint as ckpt
from dualwrite.bookkeeping import versions
from dualwrite.demo.app import tables as app_tables
from tests.backfill.support import META, TABLES, accounts, assert_equal, get, invoke, notes, seed, sigterm, spawn, tags
from tests.conftest import connection_args
from tests.servers import free_port
from tests.terminal import pty_output


def test_selection_summary_and_report(dw, settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    seed(dw, 90)
    report = tmp_path / "r.json"
    c = connection_args(settings)
    r = invoke("backfill", "run", *c, *META, "--tables", "bf_accounts,bf_notes", "--chunk-size", "40",
               "--report", str(report), "--rejects", str(tmp_path / "rej.jsonl"))  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "backfill summary" in r.output and "rows/s" in r.output
    data = json.loads(report.read_text())
    assert [s["table"] for s in data["summary"]] == ["bf_accounts", "bf_notes"]  # parents first, bf_tags left out
    for s in data["summary"]:
        assert s["read"] == 90 == s["written"] + s["skipped"] + s["rejected"] and s["status"] == "done"
    assert [t["rows_copied"] for t in data["tables"]] == [90, 90]
    assert set(ckpt.load_all(dw.backends.postgres)) == {"bf_accounts", "bf_notes"}
    # Filters: every table of a plain MetaData is store 'app', priority 0.
    assert invoke("backfill", "run", *c, *META, "--priority", "P1").exit_code == 2
    assert invoke("backfill", "run", *c, *META, "--stores", "nope").exit_code == 2
    assert invoke("backfill", "run", *c, *META, "--priority", "high").exit_code == 2
    assert invoke("backfill", "run", *c, *META, "--tables", "nope").exit_code == 2
    r = invoke("backfill", "run", *c, *META, "--priority", "P0", "--stores", "app", "--no-replay",
               "--rejects", str(tmp_path / "rej.jsonl"))  # fmt: skip
    assert r.exit_code == 0, r.output
    assert_equal(dw)


def test_priorities_and_stores_select_in_the_tables_order() -> None:
    from dualwrite.cli.backfill import _selected

    app = app_tables()
    p0_memory = _selected(app, [], ["P0"], ["memory"]).names()
    assert p0_memory == ["memory_items", "memory_retention"]
    assert set(_selected(app, [], ["1"], []).names()) == {s.name for s in app if s.priority == 1}
    both = _selected(app, [], [], ["memory", "profiles"]).names()
    assert both == [s.name for s in app if s.store in ("memory", "profiles")]


def test_dry_run_validates_everything_and_writes_nothing(dw, settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    seed(dw, 70)
    with dw.backends.sqlite.begin() as conn:
        for k in (3, 44):
            conn.execute(update(notes).where(notes.c.id == k).values(body=f"bad\x00{k}"))
    report = tmp_path / "r.json"
    r = invoke("backfill", "run", "--dry-run", *connection_args(settings), *META, "--chunk-size", "32",
               "--report", str(report))  # fmt: skip
    assert r.exit_code == 1, r.output  # two rows would be rejected
    assert "would copy bf_accounts: 70 rows in 3 chunk(s) of 32; 70 to write" in r.output
    assert "would copy bf_notes: 70 rows" in r.output and "2 would be rejected" in r.output
    assert "reject [3] column=body" in r.output and "reject [44] column=body" in r.output
    assert "nothing written" in r.output
    data = json.loads(report.read_text())
    assert [(s["read"], s["rejected"]) for s in data["summary"]] == [(70, 0), (70, 0), (70, 2)]
    with dw.backends.postgres.connect() as conn:  # nothing at all on Postgres: no rows, versions or bookkeeping
        assert not inspect(conn).has_table(ckpt.checkpoints.name)
        assert conn.execute(select(func.count()).select_from(versions)).scalar() == 0
        for t in TABLES:
            assert conn.execute(select(func.count()).select_from(t)).scalar() == 0
    assert not (tmp_path / "backfill-rejects.jsonl").exists() and not os.path.exists("backfill-rejects.jsonl")
    assert dw.backends.redis.exists(f"{settings.namespace}:changes") == 0  # no consumer group created either


def test_daemon_serves_metrics_and_health_and_stops_on_sigterm(dw, settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    seed(dw, 150)
    port = free_port()
    report = tmp_path / "r.json"
    proc = spawn(settings, "--daemon", "--metrics-port", str(port), "--chunk-size", "40", "--report", str(report),
                 "--rejects", str(tmp_path / "rej.jsonl"), "--consumer", "w1")  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not _all_done(dw):
            time.sleep(0.1)
        assert _all_done(dw)
        code, body = get(f"http://127.0.0.1:{port}/health")
        assert code == 200 and body.startswith("ok: replaying (daemon)"), body
        # the daemon exports the cutover gate (every condition) and the phase while it serves /metrics
        deadline = time.monotonic() + 15
        while (
            'dualwrite_gate_condition{condition="backfill_complete"} 1.0'
            not in get(f"http://127.0.0.1:{port}/metrics")[1]
        ):
            assert time.monotonic() < deadline, "the daemon never exported a complete backfill to the gate"
            time.sleep(0.2)
        code, body = get(f"http://127.0.0.1:{port}/metrics")
        assert code == 200
        for needle in (
            'dualwrite_gate_condition{condition="verify_clean"} 0.0',
            'dualwrite_gate_condition{condition="dead_letters_empty"} 1.0',
            'dualwrite_gate_open{target="dual_write"} 1.0',  # sqlite -> dual_write requires nothing
            'dualwrite_phase{phase="sqlite"} 1.0',
            'dualwrite_backfill_rows_total{table="bf_accounts"} 150.0',
            'dualwrite_backfill_rows_expected{table="bf_notes"} 150.0',
            'dualwrite_backfill_chunk_duration_seconds_bucket{le="60.0",table="bf_tags"} 4.0',
            "dualwrite_replay_lag_events 0.0",
            "dualwrite_replay_lag_seconds",
            "dualwrite_replay_pending 0.0",
            'dualwrite_dead_letters_total{reason="decode"} 0.0',
            'dualwrite_throttle_active{reason="pg_latency"} 0.0',
            "dualwrite_backfill_chunk_rows 40.0",
        ):
            assert needle in body, needle
        r = invoke("backfill", "status", *connection_args(settings), *META)
        assert "worker w1: replaying (daemon), not throttled" in r.output and "150/150" in r.output, r.output
        time.sleep(0.5)
        assert proc.poll() is None  # a daemon: still replaying
        out = sigterm(proc, 30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "backfill: stopped" in out
    assert "backfill summary" in out and "backfill bf_accounts: 40/150 rows" in out  # plain lines in a pipe
    assert json.loads(report.read_text())["stopped_by_signal"] is True
    assert "w1" not in invoke("backfill", "status", *connection_args(settings), *META).output  # gone from status


def test_progress_bars_on_a_terminal(dw, settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    seed(dw, 60)
    master, slave = pty.openpty()
    proc = spawn(settings, "--chunk-size", "20", "--rejects", str(tmp_path / "rej.jsonl"),
                 stdout=slave, stderr=slave, text=False)  # fmt: skip
    os.close(slave)
    text_out = pty_output(master, proc, 60)
    assert proc.returncode == 0, text_out
    assert "━" in text_out and "60/60" in text_out  # rich bars
    assert "┏" in text_out and "backfill summary" in text_out  # the summary as a rich table


def test_two_run_processes_share_the_copy(dw, settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from dualwrite.backfill.throttle import live_workers

    n = 600
    seed(dw, n)
    assert invoke("backfill", "set", *connection_args(settings), "--pause").exit_code == 0  # line both up first
    # each worker notices the resume at its own next read of the control hash (up to ~1.5 s apart); unthrottled,
    # the first copied a whole 600-row table in 0.4 s before the other was back (1 run in 2-5 failed): at 200
    # rows/s a worker is still inside the first table when the other resumes, so both take part in every table
    procs = [
        spawn(
            settings,
            "--chunk-size",
            "20",
            "--max-rows-per-second",
            "200",
            "--consumer",
            f"w{i}",
            "--report",
            str(tmp_path / f"r{i}.json"),
            "--rejects",
            str(tmp_path / "rej.jsonl"),
        )  # fmt: skip
        for i in range(2)
    ]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if [w["throttle"] for w in live_workers(dw.backends.redis, settings.namespace)] == ["paused", "paused"]:
            break
        time.sleep(0.1)
    assert invoke("backfill", "set", *connection_args(settings), "--resume").exit_code == 0
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    reports = [json.loads((tmp_path / f"r{i}.json").read_text()) for i in range(2)]
    for k, t in enumerate(TABLES):
        rows = [r["summary"][k] for r in reports]
        assert all(x["table"] == t.name for x in rows)
        assert sum(x["read"] for x in rows) == n and sum(x["written"] for x in rows) == n  # each range once
        assert all(x["read"] > 0 for x in rows), rows  # and both workers took part
    cps = ckpt.load_all(dw.backends.postgres)
    assert {(c.status, c.rows_copied) for c in cps.values()} == {("done", n)}
    assert_equal(dw)


def test_failing_chunk_logs_table_and_range_and_exits_1(dw, settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    seed(dw, 30)
    with dw.backends.postgres.begin() as conn:
        conn.execute(text("ALTER TABLE bf_tags DROP COLUMN label"))
    report = tmp_path / "r.json"
    proc = spawn(settings, "--tables", "bf_tags", "--chunk-size", "8", "--report", str(report),
                 "--rejects", str(tmp_path / "rej.jsonl"))  # fmt: skip
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1, out
    line = next(x for x in out.splitlines() if "backfill chunk failed" in x)
    assert "table=bf_tags" in line and "range=(start, " in line and "label" in line, line
    assert out.strip().splitlines()[-1].startswith("error: backfill failed:")
    assert "label" in json.loads(report.read_text())["error"]
    with dw.backends.postgres.connect() as conn:  # the lease was given back for the next run
        assert conn.execute(select(ckpt.leases.c.owner)).scalars().all() == [None]
    assert tags is not None and accounts is not None


def _all_done(dw) -> bool:  # type: ignore[no-untyped-def]
    try:
        cps = ckpt.load_all(dw.backends.postgres)
    except Exception:  # noqa: BLE001 - not created yet
        return False
    return len(cps) == 3 and all(c.status == "done" for c in cps.values())
