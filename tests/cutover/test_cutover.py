from __future__ import annotations

import re
import threading
import time

from click.testing import CliRunner
from sqlalchemy import insert, select, text

from dualwrite.adapter import DualWriter
from dualwrite.bookkeeping import meta
from dualwrite.cutover.flip import flip, flip_postponed, rollback
from dualwrite.cutover.gate import GateConfig, check
from dualwrite.redis_keys import cutover_cancel_key, dead_letter_key
from dualwrite.stream.relay import Relay
from dualwrite.stream.replay import Replayer
from dualwrite.verify.verifier import verify_backends
from tests.conftest import connection_args
from tests.shadow.helpers import TABLES, catalog, item_rows, items, seed, writer


def _mark_backfill(dw, status="done"):
    with dw.backends.postgres.begin() as conn:
        conn.execute(
            text(
                "CREATE TABLE IF NOT EXISTS _dw_backfill_checkpoints (tbl text primary key, last_key text, "
                "rows_copied bigint not null default 0, rows_rejected bigint not null default 0, "
                "status text not null, updated_at timestamptz not null default now())"
            )
        )
        for t in TABLES:
            conn.execute(
                text(
                    "INSERT INTO _dw_backfill_checkpoints (tbl, status) VALUES (:t, :s) "
                    "ON CONFLICT (tbl) DO UPDATE SET status = excluded.status"
                ),
                {"t": t.name, "s": status},
            )


def _is_primary(engine):
    with engine.connect() as conn:
        return conn.execute(select(meta.c.value).where(meta.c.name == "is_primary")).scalar()


def test_gate_refuses_and_says_which_then_flips_reach_another_process(settings, tmp_path):
    dw = writer(settings, phase="dual_write")
    other = DualWriter(settings, catalog())  # another process' writer, own PhaseStore
    hook_out = tmp_path / "hook.txt"
    hook = f'echo "$DUALWRITE_FROM>$DUALWRITE_TO" >> {hook_out}'
    try:
        seed(dw, items, item_rows(200))
        out = flip(dw.backends, dw.tables, hook=hook)
        assert not out.moved and "backfill_complete" in out.message and "2 never copied" in out.message
        assert dw.phases.current(fresh=True).name == "dual_write"
        _mark_backfill(dw, status="copying")
        out = flip(dw.backends, dw.tables)
        assert not out.moved and "not done: sh_items" in out.message
        _mark_backfill(dw)
        out = flip(dw.backends, dw.tables)  # nothing replays the stream yet: a failed apply would stay lost
        assert not out.moved and "replay_lag (no replay group on the change stream" in out.message, out.message
        Replayer(dw.backends, dw.tables).ensure_group()
        assert other.phases.current().name == "dual_write"
        out = flip(dw.backends, dw.tables, hook=hook)
        assert out.moved and out.current == "shadow" and out.hook_rc == 0
        t0 = time.monotonic()
        while other.phases.current().name != "shadow":
            assert time.monotonic() - t0 < 1.0, "flip did not reach the other process within a second"
            time.sleep(0.02)
        # Next: postgres_reads needs a clean verify (none yet) and shadow comparisons (none here).
        gate = check(dw.backends, dw.tables)
        assert gate.target == "postgres_reads" and not gate.ok
        assert [c.name for c in gate.failing] == ["verify_clean", "shadow_mismatch_rate"]
        assert verify_backends(dw.backends, TABLES).clean
        no_reads = GateConfig(min_comparisons=0)  # this application serves no reads through dualwrite
        assert flip(dw.backends, dw.tables, hook=hook, config=no_reads).moved
        # postgres_reads -> postgres_primary moves the write primary.
        assert flip(dw.backends, dw.tables, hook=hook, config=no_reads).moved
        assert dw.phases.current(fresh=True).name == "postgres_primary"
        assert _is_primary(dw.backends.postgres) == 1 and _is_primary(dw.backends.sqlite) == 0
        time.sleep(0.6)
        other.execute(insert(items).values(id=100_000, name="after flip", amount=1.0))
        with dw.backends.sqlite.connect() as conn:  # written to Postgres first, applied to SQLite
            assert conn.execute(select(items.c.name).where(items.c.id == 100_000)).scalar() == "after flip"
        # Rollback moves the primary back behind the write fence: not while an event is not applied. The
        # flipper relays the unpublished event itself (no relay runs here); the replay that would apply it
        # does not run, so the catch-up fails on the replay lag.
        out = rollback(dw.backends, dw.tables, reason="test", hook=hook)
        assert not out.moved and "replay_lag: group backfill: 1 undelivered" in out.message, out.message
        assert "outbox_drained" not in out.message, out.message
        assert out.fence is not None and out.fence.members and not out.fence.missing, out.fence
        assert dw.phases.current(fresh=True).name == "postgres_primary"
        Relay.for_backends(dw.backends).run_once()
        Replayer(dw.backends, dw.tables, target="sqlite").run(once=True)
        # Rollback goes to the last SQLite-primary, SQLite-read phase and moves the primary back.
        out = rollback(dw.backends, dw.tables, reason="test", hook=hook)
        assert out.current == "shadow"
        assert _is_primary(dw.backends.sqlite) == 1 and _is_primary(dw.backends.postgres) == 0
        assert hook_out.read_text().split() == [
            "dual_write>shadow",
            "shadow>postgres_reads",
            "postgres_reads>postgres_primary",
            "postgres_primary>shadow",
        ]
        hist = dw.phases.history()
        assert hist[-1]["to"] == "shadow" and hist[-1]["reason"] == "test"
    finally:
        other.close()
        dw.close()


def test_forced_flip_needs_reason_and_rollback_from_postgres_is_refused(settings):
    import pytest

    from dualwrite.errors import PhaseError

    dw = writer(settings, phase="dual_write")
    try:
        with pytest.raises(PhaseError):
            flip(dw.backends, dw.tables, force=True)
        out = flip(dw.backends, dw.tables, force=True, reason="emergency")
        assert out.moved and dw.phases.history()[-1]["forced"] is True
        dw.phases.set("postgres", force=True, reason="test")
        with pytest.raises(PhaseError):
            rollback(dw.backends, dw.tables)
    finally:
        dw.close()


def test_postponed_flip_says_why_it_waits_and_can_be_cancelled(settings):
    dw = writer(settings, phase="postgres_primary")
    try:
        Replayer(dw.backends, dw.tables, target="sqlite").ensure_group()
        dw.backends.redis.xadd(dead_letter_key(settings.namespace), {"e": "poison"})
        lines: list[str] = []
        result = {}
        th = threading.Thread(
            target=lambda: result.setdefault(
                "out", flip_postponed(dw.backends, dw.tables, poll=0.05, echo=lines.append, deadline=20)
            )
        )
        th.start()
        time.sleep(0.3)
        dw.backends.redis.set(cutover_cancel_key(settings.namespace), 1)
        th.join(5)
        assert not th.is_alive()
        assert result["out"].message == "cancelled" and not result["out"].moved
        assert any("dead_letters_empty" in line and "1 event(s)" in line for line in lines)
        # Once the condition clears the postponed flip proceeds.
        dw.backends.redis.delete(dead_letter_key(settings.namespace))
        out = flip_postponed(dw.backends, dw.tables, poll=0.05, echo=lines.append, deadline=5)
        assert out.moved and out.current == "postgres"
    finally:
        dw.close()


def test_cutover_cli(settings):
    from dualwrite.cli.main import main

    writer(settings, phase="dual_write").close()
    conn_args = connection_args(settings)
    args = [*conn_args, "--metadata", "tests.shadow.helpers:catalog"]
    runner = CliRunner()
    res = runner.invoke(main, ["cutover", "check", *args])
    assert res.exit_code == 1 and re.search(r"^FAIL +backfill_complete ", res.output, re.M), res.output
    res = runner.invoke(main, ["cutover", "flip", *args])
    assert res.exit_code == 1 and "2 never copied" in res.output, res.output
    res = runner.invoke(main, ["cutover", "flip", *args, "--postpone", "--deadline", "0.2", "--poll", "0.05"])
    assert res.exit_code == 1 and "waiting" in res.output and "backfill_complete" in res.output, res.output
    res = runner.invoke(main, ["cutover", "flip", *args, "--force", "--reason", "drill"])
    assert res.exit_code == 0 and "dual_write -> shadow" in res.output, res.output
    res = runner.invoke(main, ["cutover", "status", *args])
    assert res.exit_code == 0 and "phase: shadow" in res.output, res.output
    top = runner.invoke(main, ["status", *args])  # the same, one word away
    assert top.exit_code == 0 and "phase: shadow" in top.output and "dual_write -> shadow by" in top.output, top.output
    res = runner.invoke(main, ["cutover", "rollback", *args])
    assert res.exit_code == 0 and "shadow -> dual_write" in res.output, res.output
    res = runner.invoke(main, ["shadow", "reset", *conn_args])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["shadow", "report", *conn_args])
    assert res.exit_code == 0 and "comparisons: none" in res.output, res.output
