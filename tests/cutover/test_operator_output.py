"""The operator's outputs, from the CLI in another process against the real servers: `status`, `backfill
status`, `verify` and `cutover check` as JSON with `next_steps`, each step run as printed; the replay's
status lines and verify's per-table progress on stderr; plain aligned lines off a terminal, rich tables
on one."""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import subprocess
import sys
import time
from typing import Any

from sqlalchemy import text, update

from dualwrite.adapter import DualWriter
from dualwrite.cli.next_steps import DAEMON
from dualwrite.settings import Settings
from dualwrite.testing import prepared_writer, registered
from tests.backfill.support import accounts, catalog, drain_relay, seed
from tests.conftest import connection_args
from tests.userapp.operator import step_args

META = ["--metadata", "tests.backfill.support:catalog"]
FLAG = " ".join(META)
ALL = "bf_accounts,bf_tags,bf_notes"
ENV = dict(os.environ, PYTHONPATH=os.environ.get("PYTHONPATH") or os.getcwd())


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dualwrite", *args, *connection_args(settings)],
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
    )


def as_json(settings: Settings, *args: str, rc: int = 0) -> dict[str, Any]:
    out = cli(settings, *args, "--json")
    assert out.returncode == rc, (out.returncode, out.stdout, out.stderr)
    doc = json.loads(out.stdout)  # stdout is the document alone: progress and logs are on stderr
    assert isinstance(doc["next_steps"], list)
    return doc


def test_a_cutover_led_by_next_steps(settings: Settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with prepared_writer(settings, catalog(), phase="dual_write") as dw:
        seed(dw, 60)  # rows that existed before capture: only a backfill brings them
        dw.execute(update(accounts).where(accounts.c.id == 3).values(name="live"))
        drain_relay(dw)

    doc = as_json(settings, "status", *META)
    assert doc["phase"]["name"] == "dual_write" and doc["phase"]["known"] is True
    assert doc["gate"]["target"] == "shadow" and doc["gate"]["ok"] is False
    failing = {c["name"] for c in doc["gate"]["conditions"] if not c["ok"]}
    assert failing == {"backfill_complete", "replay_lag"}, doc["gate"]  # no copy, no replay group yet
    daemon = f"dualwrite backfill run {FLAG} --tables {ALL} --daemon{DAEMON}"
    assert doc["next_steps"][:2] == [daemon, f"dualwrite backfill status {FLAG}"], doc["next_steps"]

    doc = as_json(settings, "backfill", "status", *META)
    assert {t["table"]: t["state"] for t in doc["tables"]} == dict.fromkeys(ALL.split(","), "pending")
    assert doc["workers"] == [] and doc["next_steps"] == [daemon]

    # the step as printed: the worker copies, then replays until stopped, logging its status lines
    log = tmp_path / "daemon.log"
    args = [*step_args(daemon), "--progress-every", "0.2", "--rejects", str(tmp_path / "r"), *connection_args(settings)]
    with log.open("w") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "dualwrite", *args], stdout=out, stderr=subprocess.STDOUT, env=ENV
        )
    try:
        caught_up = r"replay: applied \d+ \(\+\d+ in [\d.]+s, [\d,]+ events/s\), backlog 0, lag [\d.]+s: caught up$"
        deadline = time.monotonic() + 180
        while not re.search(caught_up, log.read_text(), re.M):
            assert worker.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)

        doc = as_json(settings, "backfill", "status", *META)
        assert [t["state"] for t in doc["tables"]] == ["done"] * 3 and [t["done"] for t in doc["tables"]] == [60] * 3
        assert len(doc["workers"]) == 1 and doc["next_steps"] == [f"dualwrite verify {FLAG} --tables {ALL}"]

        verify = cli(settings, *step_args(doc["next_steps"][0]), "--segment-rows", "10", "--json")
        assert verify.returncode == 0, verify.stderr
        doc = json.loads(verify.stdout)
        assert doc["clean"] is True and [t["sqlite_rows"] for t in doc["tables"]] == [60] * 3
        assert doc["next_steps"] == [f"dualwrite cutover check {FLAG}"]
        for table in ALL.split(","):  # progress per table ends at 100 % with its ETA
            done = rf"^verify {table}: (\d+)/\1 \(100%\), \d+s elapsed, ETA 0s$"
            assert re.search(done, verify.stderr, re.M), verify.stderr

        doc = as_json(settings, *step_args(doc["next_steps"][0]))
        assert doc["current"] == "dual_write" and doc["target"] == "shadow" and doc["ok"] is True, doc
        assert doc["next_steps"] == [f"dualwrite cutover flip {FLAG}  # to shadow"]
        flip = cli(settings, *step_args(doc["next_steps"][0]))
        assert flip.returncode == 0 and "moved" in flip.stdout, flip.stdout + flip.stderr

        # shadow -> postgres_reads: the full gate; no shadow comparison yet, so the report is the next step
        doc = as_json(settings, "cutover", "check", *META, rc=1)
        assert doc["target"] == "postgres_reads" and [c["name"] for c in doc["conditions"] if not c["ok"]] == [
            "shadow_mismatch_rate"
        ], doc
        assert doc["next_steps"] == ["dualwrite shadow report", f"dualwrite cutover check {FLAG}"]
        doc = as_json(settings, "cutover", "check", *META, "--min-comparisons", "0")
        assert doc["ok"] is True and doc["next_steps"] == [f"dualwrite cutover flip {FLAG}  # to postgres_reads"]
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0, log.read_text()

    # a row changed behind dualwrite's back on Postgres: verify names it and the fix; the gate then fails
    with prepared_writer(settings, catalog(), phase="shadow") as dw:
        with dw.backends.postgres.begin() as conn:
            conn.execute(text("UPDATE bf_tags SET label = 'drift' WHERE n = 5"))
    doc = as_json(settings, "verify", *META, "--recheck-delay", "0", rc=1)
    (bad,) = [t for t in doc["tables"] if not t["clean"]]
    assert bad["table"] == "bf_tags" and bad["differing_count"] == 1
    assert doc["next_steps"] == [
        f"dualwrite verify {FLAG} --tables bf_tags --fix",
        f"dualwrite verify {FLAG} --tables bf_tags",
    ]
    doc = as_json(settings, "cutover", "check", *META, "--min-comparisons", "0", rc=1)
    assert [c["name"] for c in doc["conditions"] if not c["ok"]] == ["verify_clean"]
    assert f"dualwrite verify {FLAG} --tables bf_tags --fix" in doc["next_steps"]

    # the same in text off a terminal: aligned columns sized to their content, then the next steps
    plain = cli(settings, "cutover", "check", *META, "--min-comparisons", "0")
    assert plain.returncode == 1
    out = plain.stdout.splitlines()
    assert out[0] == "gate shadow -> postgres_reads: FAIL" and out[1].split() == [
        "result",
        "condition",
        "value",
        "detail",
    ]
    starts = {line.index(line.split()[1]) for line in out[1:8]}
    assert len(starts) == 1, out  # every condition name starts in the same column, timestamps included
    assert out[out.index("next:") + 1] == f"  dualwrite verify {FLAG} --tables bf_tags --fix"


def test_tables_on_a_terminal_are_rich(settings: Settings) -> None:
    """stdout a terminal: the gate is a rich table (box drawing), the next steps follow it."""
    prepared_writer(settings, catalog(), phase="dual_write").close()
    leader, follower = pty.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "dualwrite", "cutover", "check", *META, *connection_args(settings)],
            stdout=follower,
            stderr=subprocess.PIPE,
            timeout=120,
            env=dict(os.environ, COLUMNS="160", PYTHONPATH=os.environ.get("PYTHONPATH") or os.getcwd()),
        )
        os.close(follower)
        chunks = []
        while True:
            try:
                data = os.read(leader, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(leader)
    out = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 1, out
    assert "┃" in out or "│" in out, out
    assert "backfill_complete" in out and "next:" in out and "dualwrite backfill run" in out


def test_an_application_that_skipped_init_is_led_to_it_and_nothing_is_half_recorded(settings: Settings) -> None:
    """The application's own SQLite file and no `dualwrite init` yet: `status` names init as the next step,
    a flip is refused by the gate's bookkeeping condition (exit 1, naming init) before it records a phase
    anywhere, and the steps as printed (init, check, flip) then move it."""
    import sqlite3

    from sqlalchemy import create_engine

    engine = create_engine(settings.sqlite_url)
    tables = catalog().tables()
    tables[0].metadata.create_all(engine, tables=tables)  # the application made its tables; nothing of ours
    engine.dispose()
    doc = as_json(settings, "status", *META)
    assert doc["next_steps"][0].startswith(f"dualwrite init {FLAG}"), doc["next_steps"]
    refused = cli(settings, "cutover", "flip", *META)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "FAIL    bookkeeping" in refused.stdout and "`dualwrite init` creates them" in refused.stdout, refused.stdout
    path = settings.sqlite_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as db:
        ours = [n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE name LIKE '_dw_%'")]
    assert ours == [], ours  # the refused flip created and recorded nothing
    copy = cli(settings, "backfill", "run", *META)  # nor does a copy start: one line naming init, exit 2
    assert copy.returncode == 2 and f"run `dualwrite init {FLAG} --create-tables` first" in copy.stderr, copy.stderr
    assert len(copy.stderr.strip().splitlines()) == 1, copy.stderr
    init, check = doc["next_steps"]
    ran = cli(settings, *step_args(init))
    assert ran.returncode == 0, (init, ran.stdout, ran.stderr)
    app = registered(DualWriter(settings, catalog()))  # then the application is deployed on DualWriter
    try:
        ran = cli(settings, *step_args(check))
        assert ran.returncode == 0, (check, ran.stdout, ran.stderr)
        moved = cli(settings, "cutover", "flip", *META)
    finally:
        app.close()
    assert moved.returncode == 0 and "moved: sqlite -> dual_write" in moved.stdout, moved.stdout + moved.stderr
