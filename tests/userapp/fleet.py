"""Start writer processes of the application, watch them, stop them, and check what they wrote.

    fleet = Fleet(tmp_path)
    fleet.start(settings, count=3, rate=20)                     # three processes, started separately
    fleet.wait_committed(50)                                    # each has committed 50 transactions
    ... the operator's CLI runs the cutover in yet other processes ...
    fleet.stop()                                                # SIGTERM: finish the transaction, exit 0
    assert fleet.errors() == {}                                 # no write failed in any writer
    fleet.assert_agree({"sqlite": sqlite_engine, "postgres": pg_engine}, truth=pg_engine)

A writer stopped and started again under its name (`first_index=`: the application restarted, e.g. moved
onto the adapter) goes on in its log: the stopped process no longer counts as running.

For several SQLite files (one source each), start writers per source with their own settings and a
`source` label; `state(source)` and `assert_agree(..., source=)` then take only that source's logs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine

from dualwrite.settings import Settings
from tests.userapp.compare import assert_agree, ledger_lookup
from tests.userapp.models import Base
from tests.userapp.state import Schema, State

ROOT = Path(__file__).resolve().parents[2]


def connection_flags(settings: Settings) -> list[str]:
    return [
        "--sqlite", settings.sqlite_url,
        "--postgres", settings.postgres_url,
        "--redis", settings.redis_url,
        "--namespace", settings.namespace,
        "--pg-schema", settings.pg_schema,
        "--state-schema", settings.state_schema,
    ]  # fmt: skip


def env() -> dict[str, str]:
    """The environment of a child process: this checkout first on the path, no DUALWRITE_* leaking in."""
    out = {k: v for k, v in os.environ.items() if not k.startswith("DUALWRITE_")}
    out["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    return out


@dataclass
class Proc:
    name: str
    source: str
    popen: subprocess.Popen[bytes]
    log: Path
    stats: Path
    stderr: Path
    bounded: bool = False  # started with --max-tx or --duration: it ends by itself (exit 0), as the app's past
    stopped: bool = False  # by Fleet.stop or stop_one: a writer started again under its name is a new Proc

    def ended(self) -> bool:
        return (self.bounded or self.stopped) and self.popen.poll() == 0

    def comparators(self) -> list[int]:
        """The shadow comparator processes this writer started (its children, as `ps` shows them)."""
        found = []
        pid = self.popen.pid
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            try:
                if b"dualwrite.shadow.comparator" in Path(f"/proc/{child}/cmdline").read_bytes():
                    found.append(int(child))
            except FileNotFoundError:  # gone meanwhile
                continue
        return found

    def scrape(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """A GET of the writer's /metrics (started with metrics_port=0): sample (name, labels) -> value."""
        url = self.read_stats()["metrics_url"]
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = resp.read().decode()
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(body)
            for s in family.samples
        }

    def read_stats(self) -> dict[str, Any]:
        try:
            return json.loads(self.stats.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}


@dataclass
class Fleet:
    """Writer processes (tests.userapp.writer) with their logs and stats in `folder`."""

    folder: Path
    procs: list[Proc] = field(default_factory=list)

    def start(
        self,
        settings: Settings,
        *,
        count: int = 1,
        source: str = "main",
        first_index: int | None = None,
        **options: Any,
    ) -> list[Proc]:
        """Start `count` writers on `settings`; `options` become flags (rate=20 -> --rate 20, reads=0.2,
        shadow=100, apis="orm,core", population, documents, duration, max_tx, seed, no_relay=True)."""
        started = []
        base = len(self.procs) + 1 if first_index is None else first_index
        for i in range(count):
            index = base + i
            name = f"{source}-w{index}"
            paths = {kind: self.folder / f"{name}.{kind}" for kind in ("jsonl", "json", "stderr")}
            argv = [
                sys.executable,
                "-m",
                "tests.userapp.writer",
                "--name",
                name,
                "--index",
                str(index),
                "--log",
                str(paths["jsonl"]),
                "--stats",
                str(paths["json"]),
                *connection_flags(settings),
            ]
            for key, value in options.items():
                flag = "--" + key.replace("_", "-")
                if value is True:
                    argv.append(flag)
                elif value is not None and value is not False:
                    argv += [flag, str(value)]
            err = paths["stderr"].open("wb")
            popen = subprocess.Popen(argv, cwd=ROOT, env=env(), stdout=subprocess.DEVNULL, stderr=err)
            err.close()
            bounded = any(options.get(k) is not None for k in ("max_tx", "duration"))
            proc = Proc(name, source, popen, paths["jsonl"], paths["json"], paths["stderr"], bounded)
            self.procs.append(proc)
            started.append(proc)
        return started

    # -- watching --------------------------------------------------------------------------------------
    def stats(self) -> dict[str, dict[str, Any]]:
        return {p.name: p.read_stats() for p in self.procs}

    def committed(self) -> dict[str, int]:
        return {name: s.get("committed", 0) for name, s in self.stats().items()}

    def running(self) -> list[Proc]:
        """The writers meant to run until stopped (not those that end by themselves)."""
        return [p for p in self.procs if not p.bounded and not p.stopped]

    def check_alive(self) -> None:
        """Fail when a writer exited early (one that ends by itself may exit, with 0)."""
        dead = [p for p in self.procs if p.popen.poll() is not None and not p.ended()]
        if dead:
            raise AssertionError(
                "writer(s) exited early: "
                + "; ".join(f"{p.name} rc={p.popen.returncode}: {p.stderr.read_text()[-2000:]}" for p in dead)
            )

    def wait_committed(self, n: int, *, more_than: dict[str, int] | None = None, timeout: float = 60.0) -> None:
        """Until every running writer has committed `n` transactions (beyond `more_than`, a committed()
        snapshot)."""
        base = more_than or {}
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            counts = self.committed()
            if all(counts.get(p.name, 0) - base.get(p.name, 0) >= n for p in self.running()):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"writers did not commit {n} more transaction(s) in {timeout:.0f}s: {counts}")
            time.sleep(0.1)

    def wait_ended(self, procs: list[Proc], timeout: float = 60.0) -> None:
        """Until the writers `procs` (bounded ones) have ended, each with exit 0; the others must live on."""
        deadline = time.monotonic() + timeout
        while not all(p.ended() for p in procs):
            self.check_alive()
            if time.monotonic() > deadline:
                raise AssertionError(f"writers did not end in {timeout:.0f}s: {self.committed()}")
            time.sleep(0.1)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM each writer (it finishes its transaction, writes its stats, closes its relay); kill
        any that does not exit in `timeout`, and fail then."""
        for p in self.procs:
            p.stopped = True
            if p.popen.poll() is None:
                p.popen.send_signal(signal.SIGTERM)
        stuck = []
        for p in self.procs:
            try:
                p.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                p.popen.kill()
                p.popen.wait()
                stuck.append(p.name)
        if stuck:
            raise AssertionError(f"writer(s) {', '.join(stuck)} did not stop within {timeout:.0f}s of SIGTERM")
        bad = [p for p in self.procs if p.popen.returncode != 0]
        if bad:
            raise AssertionError(
                "; ".join(f"{p.name} exited {p.popen.returncode}: {p.stderr.read_text()[-2000:]}" for p in bad)
            )

    def stop_one(self, proc: Proc, timeout: float = 30.0) -> float:
        """SIGTERM one writer while the others go on; the seconds until it exited (with 0, asserted)."""
        start = time.monotonic()
        proc.stopped = True
        proc.popen.send_signal(signal.SIGTERM)
        rc = proc.popen.wait(timeout)
        assert rc == 0, (proc.name, rc, proc.stderr.read_text()[-3000:])
        return time.monotonic() - start

    def kill(self) -> None:
        """SIGKILL what still runs (cleanup after a failure)."""
        for p in self.procs:
            if p.popen.poll() is None:
                p.popen.kill()
                p.popen.wait()

    # -- checking ---------------------------------------------------------------------------------------
    def errors(self) -> dict[str, list[str]]:
        """Writers that saw a failed write: name -> their first error messages."""
        return {
            name: s.get("error_samples", []) or [f"{s.get('errors')} error(s)"]
            for name, s in self.stats().items()
            if s.get("errors", 0)
        }

    def total(self, field_name: str) -> int:
        return sum(int(s.get(field_name, 0)) for s in self.stats().values())

    def logs(self, source: str | None = None) -> list[Path]:
        # a writer restarted under its name (the same application, moved onto the adapter) goes on in its log
        return list(dict.fromkeys(p.log for p in self.procs if source is None or p.source == source))

    def state(self, truth: Engine | None = None, source: str | None = None) -> State:
        """The rows the databases must hold, from the logs; transactions in doubt are looked up in
        `truth`'s ledger (the final primary)."""
        resolve = ledger_lookup(truth) if truth is not None else None
        return State.from_logs(Schema.of(Base.metadata), self.logs(source), resolve=resolve)

    def assert_agree(
        self, engines: dict[str, Engine], *, truth: Engine | None = None, source: str | None = None
    ) -> State:
        state = self.state(truth, source)
        assert_agree(state, engines)
        return state

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.kill()
