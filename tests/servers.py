"""Private server instances for tests that stop, restart or cut servers (never the shared ones):
a redis-server and a PostgreSQL 15 cluster (initdb/pg_ctl as the postgres user), each on a random
loopback port. Clusters take their TimeZone from DUALWRITE_TEST_PG_TIMEZONE when it is set."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(pred, timeout: float = 15.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class PrivateRedis:
    def __init__(self, workdir: Path, binary: str = "redis-server") -> None:
        """`binary`: which redis-server to run (tests/stream runs 6.2 and 7 side by side)."""
        self.port = free_port()
        self.workdir = workdir
        self.binary = binary
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen(
            [self.binary, *args, "--dir", str(self.workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        client = redis.Redis.from_url(self.url)

        def up() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        wait_for(up, 10, f"the private {self.binary}")
        client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # this test's own server, by its pid; nothing on disk
            self.proc.wait(timeout=10)
        self.proc = None


class PrivatePostgres:
    """A throwaway cluster (initdb/pg_ctl as the postgres user) on a random loopback port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="dw-pg-"))
        shutil.chown(self.dir, "postgres", "postgres")
        self.data = self.dir / "data"
        self._as_pg([PG_BIN / "initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _as_pg(self, cmd: list[object]) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *map(str, cmd)],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        zone = os.environ.get("DUALWRITE_TEST_PG_TIMEZONE", "").strip()
        if zone:  # the suite run against a Postgres whose TimeZone is not UTC (see tests/conftest.py)
            opts += f" -c TimeZone={zone}"
        self._as_pg([PG_BIN / "pg_ctl", "-D", self.data, "-o", opts, "-l", self.dir / "log", "-w", "start"])

    def stop(self) -> None:
        self._as_pg([PG_BIN / "pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop"])

    def destroy(self) -> None:
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


@contextmanager
def private_cluster() -> Iterator[PrivatePostgres]:
    """A started private cluster, destroyed afterwards; skips where it cannot run (no root, no binaries)."""
    if not (PG_BIN / "initdb").exists() or os.geteuid() != 0:
        pytest.skip("needs root and the PostgreSQL 15 server binaries to run a private cluster")
    cluster = PrivatePostgres()
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.destroy()
