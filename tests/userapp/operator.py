"""The operator's side of the application's cutover: `dualwrite` commands, each in a process of its own,
and the backfill/replay daemon (`dualwrite backfill run --daemon`, as the README has operators run it).

    ok(dualwrite("cutover", "flip", *connection_args(settings), *METADATA))
    daemon = start_daemon(settings, tmp_path, "--chunk-size", "100")   # stderr in tmp_path/backfill.stderr
    wait("every table copied", lambda: backfill_complete(backends, app, GateConfig()).ok, 120, 0.5)
    assert stop_daemon(daemon) == 0                                       # SIGTERM: it exits 0
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dualwrite.settings import Settings
from tests.conftest import connection_args
from tests.userapp.fleet import ROOT, env

METADATA = ["--metadata", "tests.userapp.writer:tables"]


def dualwrite(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The operator's CLI, as its own process."""
    return subprocess.run(
        [sys.executable, "-m", "dualwrite", *args], cwd=ROOT, env=env(), capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


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
