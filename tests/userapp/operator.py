"""The operator's side of the application's cutover: `dualwrite` commands, each in a process of its own,
and the backfill/replay daemon (`dualwrite backfill run --daemon`, as the README has operators run it).

    conn = prepare(settings)                                              # the app's schema, `dualwrite init`
    move(conn, tmp_path, "dual_write", "cutover", "flip")                 # exit 0, moved, in a --report
    doc = cli_json(conn, tmp_path, "verify-1", "verify")                  # its --report, with "exit"
    daemon = start_daemon(settings, tmp_path, "--chunk-size", "100")   # stderr in tmp_path/backfill.stderr
    wait("every table copied", lambda: backfill_complete(backends, app, GateConfig()).ok, 120, 0.5)
    assert stop_daemon(daemon) == 0                                       # SIGTERM: it exits 0
    steps = printed_steps(proc.stdout + proc.stderr)                      # its `next:` block (or `dualwrite ...`)
    dualwrite(*step_args(steps[0]), environ=connection_env(settings))     # run as printed, DUALWRITE_* set
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import text

from dualwrite.engines import Backends, sqlite_engine
from dualwrite.events import key_text
from dualwrite.settings import Settings
from tests.conftest import connection_args
from tests.userapp.fleet import ROOT, Fleet, env
from tests.userapp.models import Base

METADATA = ["--metadata", "tests.userapp.writer:tables"]


def dualwrite(
    *args: str, timeout: float = 120, environ: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The operator's CLI, as its own process (`environ`: DUALWRITE_* variables it is given)."""
    return subprocess.run(
        [sys.executable, "-m", "dualwrite", *args], cwd=ROOT, env=env() | (environ or {}), capture_output=True,
        text=True, timeout=timeout,
    )  # fmt: skip


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def prepare(settings: Settings) -> list[str]:
    """The application makes its own schema in its SQLite file, then the operator runs `dualwrite init`;
    the connection flags of every later command."""
    app_db = sqlite_engine(settings.sqlite_url)
    Base.metadata.create_all(app_db)
    app_db.dispose()
    conn = connection_args(settings)
    ok(dualwrite("init", *conn, *METADATA, "--create-tables"))
    return conn


def cli_json(conn: list[str], tmp: Path, name: str, *command: str) -> dict[str, Any]:
    """A CLI command's --report (tmp/<name>.json), with its exit status as "exit" (the caller judges it);
    every command's output goes to tmp/operator.log, for a run that failed."""
    report = tmp / f"{name}.json"
    proc = dualwrite(*command, *conn, *METADATA, "--report", str(report))
    with (tmp / "operator.log").open("a") as log:
        log.write(f"== {name}: exit {proc.returncode}\n{proc.stdout}{proc.stderr}\n")
    assert report.exists(), f"{name}: exit {proc.returncode}, no report\n{proc.stdout}\n{proc.stderr}"
    return json.loads(report.read_text()) | {"exit": proc.returncode}


def move(conn: list[str], tmp: Path, to: str, *command: str) -> dict[str, Any]:
    """A `cutover flip`/`rollback` that must move the phase to `to`; its report."""
    doc = cli_json(conn, tmp, f"to-{to}", *command)
    assert doc["exit"] == 0 and doc["moved"] and doc["phase"] == to, doc
    return doc


def wait(what: str, check: Callable[[], Any], timeout: float = 60.0, every: float = 0.2) -> Any:
    """Poll `check` until it returns something true (returned), failing after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)


def start_daemon(settings: Settings, tmp: Path, *flags: str) -> subprocess.Popen[bytes]:
    """`dualwrite backfill run --daemon` on the application's tables: copies, then replays until SIGTERM."""
    err = (tmp / "backfill.stderr").open("wb")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "dualwrite", "backfill", "run", "--daemon", *connection_args(settings), *METADATA,
         *flags],
        cwd=ROOT, env=env(), stdout=subprocess.DEVNULL, stderr=err,
    )  # fmt: skip
    err.close()
    return daemon


def stop_daemon(daemon: subprocess.Popen[bytes] | None, timeout: float = 30) -> int | None:
    """SIGTERM the daemon (SIGKILL after `timeout`); its exit status."""
    if daemon is None:
        return None
    daemon.terminate()
    try:
        return daemon.wait(timeout)
    except subprocess.TimeoutExpired:
        daemon.kill()
        return daemon.wait()


def condition(report: dict[str, Any], name: str) -> dict[str, Any]:
    """The gate condition `name` of a flip's or check's --report."""
    (found,) = [c for c in report["gate"]["conditions"] if c["name"] == name]
    return found


def plant_ledger(backends: Backends, schema: str, writer: str, n: int) -> str:
    """An out-of-band edit: a raw UPDATE of one ledger row on Postgres, past the adapter (no event, no
    version); its key text. A ledger row is never written again, so nothing but a repair heals it."""
    with backends.postgres.begin() as conn:
        done = conn.execute(
            text(f"UPDATE \"{schema}\".ledger SET op = 'planted' WHERE writer = :w AND n = :n"), {"w": writer, "n": n}
        )
        assert done.rowcount == 1, (writer, n)
    return key_text([writer, n])


def ledger_on_postgres(backends: Backends, schema: str, writer: str, n: int) -> bool:
    with backends.postgres.connect() as conn:
        sql = text(f'SELECT count(*) FROM "{schema}".ledger WHERE writer = :w AND n = :n')
        return bool(conn.execute(sql, {"w": writer, "n": n}).scalar())


def finish(fleet: Fleet, backends: Backends, app: Any) -> None:
    """The end of a run that must have lost nothing: the writers stopped (each exits 0 after SIGTERM), none
    saw a failed write or read, the replay caught up, and every write they acknowledged is on Postgres and
    SQLite, exactly (planted rows repaired too)."""
    from dualwrite.cutover.gate import GateConfig, replay_lag

    fleet.check_alive()
    fleet.stop()
    assert fleet.errors() == {}, fleet.errors()
    assert fleet.total("read_errors") == 0 and fleet.total("read_disagreements") == 0, fleet.stats()
    wait("the replay to catch up", lambda: replay_lag(backends, app, GateConfig(max_replay_lag=0)).ok, 60, 0.3)
    fleet.assert_agree({"postgres": backends.postgres, "sqlite": backends.sqlite_read}, truth=backends.postgres)


def stop_all(fleet: Fleet, daemon: subprocess.Popen[bytes] | None, backends: Backends) -> int | None:
    """The end of a run: the writers first, then the daemon (stop_daemon), then the test's connections; the
    daemon's exit status."""
    fleet.kill()
    rc = stop_daemon(daemon)
    backends.close()
    return rc


def step_args(step: str) -> list[str]:
    """A next step as printed, without the leading `dualwrite` (and its trailing comment)."""
    words = shlex.split(step, comments=True)
    assert words[0] == "dualwrite", step
    return words[1:]


def printed_steps(out: str) -> list[str]:
    """The commands an output tells the operator to run: its `next:` block, else the `dualwrite ...` a
    refusal names between backquotes."""
    lines = out.splitlines()
    if "next:" in lines:
        block = lines[lines.index("next:") + 1 :]
        return [line.strip() for line in block if line.startswith("  dualwrite ")]
    return re.findall(r"`(dualwrite [^`]+)`", out)
