"""The CLI's bad-input table (issue 16, items 4 and 6): each bad input to a `dualwrite` command ends with the
documented exit code and one clear line naming what and where, never a traceback, never the password, and
changes nothing (the SQLite file, both Postgres schemas, the Redis namespace and the folder's files are
the same afterwards; a typo'd SQLite path is never created). Each case is its own test; the commands run
in-process (click's CliRunner) against one shared, prepared environment, so the table stays fast.
With DW_FAULTS_REPORT=1 the table is written to reports/reliability.md ("Bad input × handling: the CLI")."""

from __future__ import annotations

import hashlib
import os
import socket
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from sqlalchemy import create_engine, text

from dualwrite.cli.main import main
from dualwrite.testing import prepared_writer
from tests.backfill.support import catalog, seed
from tests.conftest import PG_ADMIN_URL, REDIS_TEST_URL, fresh_schema, redis_namespace, settings_for, state_schema_for
from tests.faults.cli_bad_input_cases import CASES, MISSING, TYPO, Case, ConnWith
from tests.faults.conftest import Collector
from tests.servers import free_port

PASSWORD = "s3cret"
# trust authentication on the test server: the password is accepted and ignored, but every line shown must mask it
PG_URL = PG_ADMIN_URL.replace("postgresql://postgres@", f"postgresql://postgres:{PASSWORD}@")


@dataclass
class Env:
    root: Path
    sqlite: Path
    schema: str
    state: str
    namespace: str
    files: dict[str, Path] = field(default_factory=dict)

    def conn(self, **override: str) -> list[str]:
        values = {
            "--sqlite": str(self.sqlite),
            "--postgres": PG_URL,
            "--redis": REDIS_TEST_URL,
            "--namespace": self.namespace,
            "--pg-schema": self.schema,
            "--state-schema": self.state,
        }
        values.update({f"--{k.replace('_', '-')}": v for k, v in override.items()})
        return [x for pair in values.items() for x in pair]


def _expand(env: Env, case: Case) -> list[str]:
    fmt = {k: str(v) for k, v in env.files.items()} | {"root": str(env.root), "sqlite": str(env.sqlite)}
    out: list[str] = []
    for a in case.args:
        if isinstance(a, ConnWith):
            out += env.conn(**{k: v.format(**fmt) for k, v in a.override.items()})
        else:
            out.append(str(a).format(**fmt))
    return out


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    import uuid

    uid = uuid.uuid4().hex[:10]
    root = tmp_path_factory.mktemp("bad-input")
    with fresh_schema(f"bi{uid}") as schema, redis_namespace(f"bi{uid}") as ns:
        e = Env(root, root / "app.db", schema, state_schema_for(schema), ns)
        settings = settings_for(e.sqlite, schema, ns)
        dw = prepared_writer(settings, catalog(), phase="dual_write")
        seed(dw, 5)
        dw.close()
        (root / "notes.txt").write_text("not a database\n")
        broken = root / "broken.db"
        broken.write_bytes(b"SQLite format 3\x00" + b"\xff" * 300)
        e.files.update(text=root / "notes.txt", broken=broken)
        yield e


def _snapshot(env: Env) -> dict[str, Any]:
    """Everything a bad input must leave alone."""
    snap: dict[str, Any] = {"files": sorted(str(p.relative_to(env.root)) for p in env.root.rglob("*"))}
    snap["files"] = [f for f in snap["files"] if not f.startswith("app.db-")]  # WAL/shm come and go
    con = sqlite3.connect(f"file:{env.sqlite}?mode=ro", uri=True)
    try:
        snap["sqlite"] = hashlib.sha256("\n".join(con.iterdump()).encode()).hexdigest()
    finally:
        con.close()
    engine = create_engine(PG_ADMIN_URL)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT schemaname, tablename FROM pg_tables WHERE schemaname IN (:a, :b) ORDER BY 1, 2"),
                {"a": env.schema, "b": env.state},
            ).all()
            snap["pg"] = {f"{s}.{t}": conn.execute(text(f'SELECT count(*) FROM "{s}"."{t}"')).scalar() for s, t in rows}
    finally:
        engine.dispose()
    client = redis.Redis.from_url(REDIS_TEST_URL)
    try:
        keys = sorted(client.scan_iter(f"{env.namespace}:*"))
        snap["redis"] = {k: client.dump(k) for k in keys if b":workers" not in k}
    finally:
        client.close()
    return snap


@pytest.fixture(scope="module")
def weak_role(env: Env) -> Iterator[str]:
    """A Postgres login that is not a superuser (it cannot set session_replication_role)."""
    name = f"dw_weak_{env.schema[-8:]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE ROLE "{name}" LOGIN'))
        conn.execute(text(f'GRANT USAGE ON SCHEMA "{env.schema}", "{env.state}" TO "{name}"'))
    try:
        yield PG_URL.replace("postgres:", f"{name}:", 1)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP OWNED BY "{name}"'))
            conn.execute(text(f'DROP ROLE "{name}"'))
        admin.dispose()


ROWS: dict[str, tuple[str, int, str]] = {}


@pytest.fixture(scope="module", autouse=True)
def _report(collector: Collector) -> Iterator[None]:
    yield
    for name, row in ROWS.items():
        collector.cli_bad_input[name] = row


LAST: dict[str, Any] = {}  # the state after the previous case: every case must leave it as it found it


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case, env: Env, weak_role: str, monkeypatch: pytest.MonkeyPatch) -> None:
    env.files["weak_url"] = weak_role  # type: ignore[assignment]
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    env.files["busy_port"] = busy.getsockname()[1]  # type: ignore[assignment]
    env.files["dead_port"] = free_port()  # type: ignore[assignment]
    lock = None
    if case.locked:  # another process holds the write lock
        from dualwrite import engines

        monkeypatch.setitem(engines.sqlite_engine.__kwdefaults__, "busy_ms", 300)  # fail fast, not in 10 s
        lock = sqlite3.connect(env.sqlite, timeout=0.1)
        lock.execute("BEGIN EXCLUSIVE")
    try:
        before = (LAST.pop("snap", None) or _snapshot(env)) if lock is None else None
        args = _expand(env, case)
        extra = {k: v for k, v in case.env if k != "SQLITE"}
        if ("SQLITE", TYPO) in case.env:
            extra["DUALWRITE_SQLITE_URL"] = TYPO.format(root=env.root)
        runner = CliRunner(env={**{k: None for k in os.environ if k.startswith("DUALWRITE_")}, **extra})
        result = runner.invoke(main, args, catch_exceptions=True)
    finally:
        busy.close()
        if lock is not None:
            lock.rollback()
            lock.close()
    out = result.output
    shown = out.replace("\n", " ⏎ ")[:300]
    fragment = case.fragment.format(**{k: str(v) for k, v in env.files.items()}, sqlite=str(env.sqlite))
    command = " ".join(a for a in args[: next((i for i, a in enumerate(args) if a.startswith("-")), len(args))])
    line = _error_line(out, fragment).replace(str(env.root), "DIR").replace(PASSWORD, "***")
    ROWS[case.name] = (command, result.exit_code, line)
    assert result.exception is None or isinstance(result.exception, SystemExit), shown
    assert "Traceback" not in out, shown
    assert PASSWORD not in out, shown
    assert result.exit_code == case.code, shown
    assert fragment in out, shown
    if case.code == 2:
        errors = [line for line in out.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and fragment in errors[0], shown
    for p in (TYPO, MISSING):
        assert not Path(p.format(root=env.root)).exists(), f"{p} was created"
    if before is not None and not case.writes:
        after = _snapshot(env)
        assert after == before, "something changed"
        LAST["snap"] = after


def _error_line(out: str, fragment: str) -> str:
    """The line the report shows: the error, else the line that says what the case expects."""
    lines = [line for line in out.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    said = [line for line in lines if fragment in line]
    return " ".join((errors or said or lines or [""])[0].split())[:220]
