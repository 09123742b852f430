"""A migration stopped half-way (chunk budget, or a killed process) finishes with --resume exactly like
an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import PG_ADMIN_URL, state_schema_for
from tests.migrate.support import drop_schema, fetch, make_db, migrate, rejects

SCRIPT = """
CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, price NUMERIC(8,2), doc JSON);
CREATE TABLE tags (tenant TEXT, n INTEGER, label TEXT, PRIMARY KEY (tenant, n));
CREATE TABLE events (msg TEXT, at DATETIME);
"""


def build(path, n: int) -> str:  # type: ignore[no-untyped-def]
    items = [(i, f"item {i}", i / 4, json.dumps({"i": i}) if i % 97 else "{broken") for i in range(1, n + 1)]
    tags = [(f"t{i % 7}", i, "x" * (i % 13)) for i in range(n)]
    events = [(f"e{i}", f"2024-01-01 00:00:{i % 60:02d}" if i % 211 else "not a date") for i in range(n)]
    return make_db(path, SCRIPT, {"items": items, "tags": tags, "events": events})


def dump(schema: str) -> dict[str, list]:
    return {
        "items": fetch(schema, "SELECT * FROM items ORDER BY id"),
        "tags": fetch(schema, 'SELECT * FROM tags ORDER BY tenant COLLATE "C", n'),
        "events": fetch(schema, "SELECT * FROM events ORDER BY _dw_rowid"),
    }


SCHEMA_EXISTS = "SELECT 1 FROM pg_namespace WHERE nspname = :s"


def reject_keys(db: str, schema: str) -> set[tuple[str, str]]:
    return {(r["table"], r["key"]) for r in rejects(db, schema)}


@pytest.fixture
def reference(tmp_path, uid):  # type: ignore[no-untyped-def]
    schema = f"t_{uid}_ref"
    yield schema
    drop_schema(schema)


@pytest.mark.parametrize("mode", [[], ["--versioned"]], ids=["copy", "versioned"])
def test_chunk_budget_then_resume_equals_uninterrupted(tmp_path, pg_schema, reference, mode) -> None:  # type: ignore[no-untyped-def]
    db = build(tmp_path / "app.db", 1500)
    full, rep = migrate(db, reference, "--chunk-size", "100")
    assert full.exit_code == 1, full.output  # verified; its dirty rows rejected
    stopped, rep1 = migrate(db, pg_schema, "--chunk-size", "100", "--max-chunks", "20", *mode)
    assert stopped.exit_code == 3 and "--resume" in stopped.output
    assert rep1["status"] == "stopped"
    assert 0 < sum(len(v) for v in dump_partial(pg_schema)) < 4500
    done, rep2 = migrate(db, pg_schema, "--chunk-size", "100", "--resume", *mode)
    assert done.exit_code == 1, done.output
    # the migration's own tables were in the state schema all along; a plain copy drops them after success,
    # a --versioned one keeps the versions (a live setup uses them)
    state = state_schema_for(pg_schema)
    if mode:
        versions = fetch(state, "SELECT count(*) FROM _dw_versions")[0][0]
        assert versions == sum(t["written"] for t in rep2["tables"])
    else:
        assert rep2["state"].startswith("dropped") and not fetch(pg_schema, SCHEMA_EXISTS, s=state)
    assert dump(pg_schema) == dump(reference)
    assert reject_keys(db, pg_schema) == reject_keys(db, reference)
    assert [(t["read"], t["written"], t["rejected"]) for t in rep2["tables"]] == [
        (t["read"], t["written"], t["rejected"]) for t in rep["tables"]
    ]


def dump_partial(schema: str) -> list[list]:
    return [fetch(schema, f"SELECT 1 FROM {t}") for t in ("items", "tags", "events")]


def test_killed_process_then_resume_equals_uninterrupted(tmp_path, pg_schema, reference) -> None:  # type: ignore[no-untyped-def]
    db = build(tmp_path / "app.db", 6000)
    full, _ = migrate(db, reference, "--chunk-size", "200")
    assert full.exit_code == 1, full.output  # verified; its dirty rows rejected
    rejects_dir = tmp_path / f"rejects-{pg_schema}"
    argv = [sys.executable, "-c", "from dualwrite.cli.migrate import command; command()"]
    argv += ["--sqlite", db, "--postgres", PG_ADMIN_URL, "--pg-schema", pg_schema, "--rejects", str(rejects_dir)]
    argv += ["--state-schema", state_schema_for(pg_schema)]
    argv += ["--chunk-size", "50"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ))
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                copied = fetch(
                    state_schema_for(pg_schema), "SELECT coalesce(sum(rows_copied), 0) FROM _dw_backfill_checkpoints"
                )[0][0]
            except Exception:  # noqa: BLE001 - not created yet
                copied = 0
            if copied >= 2000:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)  # a crash: no chance to finish the chunk
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    status = fetch(state_schema_for(pg_schema), "SELECT tbl, status FROM _dw_backfill_checkpoints")
    assert any(s != "done" for _, s in status) or len(status) < 3, "the run finished before the kill"
    done, rep = migrate(db, pg_schema, "--chunk-size", "200", "--resume")
    assert done.exit_code == 1, done.output
    assert rep["verified"]
    assert dump(pg_schema) == dump(reference)
    assert reject_keys(db, pg_schema) == reject_keys(db, reference)


def test_sigterm_stops_after_the_chunk_then_resume(tmp_path, pg_schema) -> None:  # type: ignore[no-untyped-def]
    db = build(tmp_path / "app.db", 6000)
    argv = [sys.executable, "-c", "from dualwrite.cli.migrate import command; command()"]
    argv += ["--sqlite", db, "--postgres", PG_ADMIN_URL, "--pg-schema", pg_schema]
    argv += ["--state-schema", state_schema_for(pg_schema)]
    argv += ["--rejects", str(tmp_path / f"rejects-{pg_schema}"), "--chunk-size", "50"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if (
                fetch(
                    state_schema_for(pg_schema), "SELECT coalesce(sum(rows_copied), 0) FROM _dw_backfill_checkpoints"
                )[0][0]
                > 500
            ):
                break
        except Exception:  # noqa: BLE001 - not created yet
            pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 3, output
    assert "run again with --resume" in output
    done, rep = migrate(db, pg_schema, "--resume")
    assert done.exit_code == 1, done.output
    assert [(t["read"], t["written"] + t["rejected"]) for t in rep["tables"]] == [(6000, 6000)] * 3
