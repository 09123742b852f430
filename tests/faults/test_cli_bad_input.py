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
from tests.faults.conftest import Collector
from tests.servers import free_port

PASSWORD = "s3cret"
# trust authentication on the test server: the password is accepted and ignored, but every line shown must mask it
PG_URL = PG_ADMIN_URL.replace("postgresql://postgres@", f"postgresql://postgres:{PASSWORD}@")
META = ("--metadata", "tests.backfill.support:md")


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


@dataclass(frozen=True)
class Case:
    name: str  # what is wrong, as the report shows it
    args: tuple[Any, ...]  # CONN (the connection flags) or CONN_WITH(...) expand; {root} etc. are formatted
    code: int
    fragment: str  # expected in the one error line (or, exit 1, in the output)
    env: tuple[tuple[str, str], ...] = ()
    writes: bool = False  # a real run that found a problem (verify records its result): may change state
    locked: bool = False  # another process holds the SQLite file's write lock meanwhile


class ConnWith:
    def __init__(self, **override: str) -> None:
        self.override = override


CONN = ConnWith()
MISSING = "{root}/no-such-dir/app.db"
TYPO = "{root}/typo.db"


def C(  # noqa: N802
    name: str,
    args: list[Any],
    code: int,
    fragment: str,
    env: dict[str, str] | None = None,
    writes: bool = False,
    locked: bool = False,
) -> Case:
    return Case(name, tuple(args), code, fragment, tuple((env or {}).items()), writes, locked)


CASES = [
    # -- where the servers and files are ----------------------------------------------------------------
    C("--postgres with a bad port", ["init", CONN, "--postgres", "postgresql://u:s3cret@h:x/db"], 2, "--postgres"),
    C("--postgres not a postgres URL", ["verify", CONN, *META, "--postgres", "mysql://u:s3cret@h/db"], 2, "--postgres"),
    C(
        "Postgres not answering",
        ["verify", ConnWith(postgres="postgresql://u:s3cret@127.0.0.1:1/test"), *META],
        2,
        "127.0.0.1",
    ),
    C("--redis not a redis URL", ["backfill", "set", CONN, "--pause", "--redis", "http://x:1"], 2, "--redis"),
    C(
        "Redis not answering",
        ["backfill", "set", ConnWith(redis="redis://:s3cret@127.0.0.1:1/0"), "--pause"],
        2,
        "redis",
    ),
    C("--namespace with a space", ["backfill", "status", ConnWith(namespace="a b"), *META], 2, "--namespace"),
    C("--pg-schema not an identifier", ["verify", ConnWith(pg_schema="x;drop"), *META], 2, "--pg-schema"),
    C("--state-schema not an identifier", ["verify", ConnWith(state_schema="1 x"), *META], 2, "--state-schema"),
    C("--pool-size 0", ["verify", CONN, *META, "--pool-size", "0"], 2, "--pool-size"),
    C("--max-overflow -1", ["verify", CONN, *META, "--max-overflow", "-1"], 2, "--max-overflow"),
    C("DUALWRITE_POOL_SIZE=abc", ["verify", CONN, *META], 2, "DUALWRITE_POOL_SIZE", {"DUALWRITE_POOL_SIZE": "abc"}),
    C("--sqlite not a sqlite URL", ["status", ConnWith(sqlite="mysql://x/y")], 2, "--sqlite"),
    C("--sqlite in-memory", ["status", ConnWith(sqlite="sqlite://")], 2, "in-memory"),
    C("--sqlite path that does not exist (status)", ["status", ConnWith(sqlite=TYPO)], 2, "does not exist"),
    C(
        "--sqlite path that does not exist (backfill run)",
        ["backfill", "run", ConnWith(sqlite=TYPO), *META],
        2,
        "does not exist",
    ),
    C("--sqlite path that does not exist (verify)", ["verify", ConnWith(sqlite=TYPO), *META], 2, "does not exist"),
    C("--sqlite path that does not exist (migrate)", ["migrate", ConnWith(sqlite=TYPO)], 2, "does not exist"),
    C("--sqlite path that does not exist (phase)", ["phase", ConnWith(sqlite=TYPO)], 2, "does not exist"),
    C(
        "--sqlite path that does not exist (cutover flip)",
        ["cutover", "flip", ConnWith(sqlite=TYPO), *META],
        2,
        "does not exist",
    ),
    C("DUALWRITE_SQLITE_URL path that does not exist", ["status"], 2, "DUALWRITE_SQLITE_URL", {"SQLITE": TYPO}),
    C("init into a folder that does not exist", ["init", ConnWith(sqlite=MISSING)], 2, "does not exist"),
    C("a file that is not SQLite (init)", ["init", ConnWith(sqlite="{text}")], 2, "is not a SQLite database"),
    C("a file that is not SQLite (migrate)", ["migrate", ConnWith(sqlite="{text}")], 2, "is not a SQLite database"),
    C("a file that is not SQLite (status)", ["status", ConnWith(sqlite="{text}")], 2, "is not a SQLite database"),
    C("a folder as --sqlite", ["status", ConnWith(sqlite="{root}")], 2, "is not a file"),
    C("--sqlite given twice (migrate)", ["migrate", CONN, "--sqlite", "{sqlite}"], 2, "given 2 times"),
    C("--sqlite given twice (backfill run)", ["backfill", "run", CONN, *META, "--sqlite", "{sqlite}"], 2, "2 times"),
    C("a SQLite file that cannot be read (flip)", ["cutover", "flip", ConnWith(sqlite="{broken}"), *META], 2, "sqlite"),
    # -- which tables ----------------------------------------------------------------------------------
    C("--metadata not module:attr", ["verify", CONN, "--metadata", "not a spec"], 2, "module:attribute"),
    C("--metadata module missing", ["verify", CONN, "--metadata", "no_such_mod_q:md"], 2, "cannot import"),
    C("--metadata not a MetaData", ["verify", CONN, "--metadata", "os:sep"], 2, "is not a Tables, MetaData"),
    C("--metadata and --reflect", ["verify", CONN, *META, "--reflect"], 2, "give one of them"),
    C("no tables given", ["verify", CONN], 2, "which tables?"),
    C("unknown table (verify)", ["verify", CONN, *META, "--tables", "nope"], 2, "'nope'"),
    C("unknown table (backfill run)", ["backfill", "run", CONN, *META, "--table", "nope"], 2, "'nope'"),
    C("unknown table (backfill reset)", ["backfill", "reset", CONN, "--tables", "nope", "--yes"], 2, "'nope'"),
    C(
        "backfill reset before any backfill",
        ["backfill", "reset", CONN, "--tables", "bf_notes", "--yes"],
        2,
        "no backfill progress",
    ),
    C("unknown table (migrate)", ["migrate", CONN, "--tables", "nope"], 2, "nope"),
    C("unknown priority", ["backfill", "run", CONN, *META, "--priority", "high"], 2, "--priority"),
    C("unknown store", ["backfill", "run", CONN, *META, "--stores", "nope"], 2, "store 'nope'"),
    C("init --metadata without --create-tables", ["init", CONN, *META], 2, "--create-tables"),
    # -- numbers -----------------------------------------------------------------------------------------
    C("rate nan", ["backfill", "run", CONN, *META, "--max-rows-per-second", "nan"], 2, "not a finite number"),
    C("rate inf", ["backfill", "run", CONN, *META, "--max-rows-per-second", "inf"], 2, "not a finite number"),
    C("rate negative", ["backfill", "run", CONN, *META, "--max-rows-per-second", "-5"], 2, "--max-rows-per-second"),
    C("rate huge", ["backfill", "run", CONN, *META, "--max-rows-per-second", "1e12"], 2, "not in the range"),
    C("rate not a number", ["backfill", "run", CONN, *META, "--max-rows-per-second", "fast"], 2, "is not a number"),
    C("latency nan", ["backfill", "run", CONN, *META, "--max-pg-latency-ms", "nan"], 2, "--max-pg-latency-ms"),
    C("lag negative", ["backfill", "run", CONN, *META, "--max-replication-lag-s", "-1"], 2, "--max-replication-lag"),
    C("chunk size 0", ["backfill", "run", CONN, *META, "--chunk-size", "0"], 2, "--chunk-size"),
    C("lease ttl 0", ["backfill", "run", CONN, *META, "--lease-ttl", "0"], 2, "--lease-ttl"),
    C("max rejects -1", ["backfill", "run", CONN, *META, "--max-rejects", "-1"], 2, "--max-rejects"),
    C("live rate nan", ["backfill", "set", CONN, "--max-rows-per-second", "nan"], 2, "not a finite number"),
    C("live latency inf", ["backfill", "set", CONN, "--max-pg-latency-ms", "inf"], 2, "not a finite number"),
    C("live chunk size -1", ["backfill", "set", CONN, "--chunk-size", "-1"], 2, "--chunk-size"),
    C("gate mismatch rate nan", ["cutover", "check", CONN, *META, "--max-mismatch-rate", "nan"], 2, "finite"),
    C(
        "gate mismatch rate above 1",
        ["cutover", "flip", CONN, *META, "--max-mismatch-rate", "2"],
        2,
        "between 0 and 1",
    ),
    C("gate mismatch rate negative", ["status", CONN, "--max-mismatch-rate", "-0.1"], 2, "--max-mismatch-rate"),
    C("gate min comparisons -1", ["cutover", "check", CONN, *META, "--min-comparisons", "-1"], 2, "--min-comparisons"),
    C("gate replay lag huge", ["cutover", "check", CONN, *META, "--max-replay-lag", "1e99"], 2, "--max-replay-lag"),
    C("gate verify age inf", ["cutover", "check", CONN, *META, "--verify-max-age", "inf"], 2, "finite"),
    C("flip --deadline nan", ["cutover", "flip", CONN, *META, "--postpone", "--deadline", "nan"], 2, "--deadline"),
    C("flip --poll 0", ["cutover", "flip", CONN, *META, "--postpone", "--poll", "0"], 2, "--poll"),
    C("deadletters list --count -1", ["backfill", "deadletters", "list", CONN, "--count", "-1"], 2, "--count"),
    C("deadletters list --count abc", ["backfill", "deadletters", "list", CONN, "--count", "abc"], 2, "--count"),
    C("verify --segment-rows 0", ["verify", CONN, *META, "--segment-rows", "0"], 2, "--segment-rows"),
    C("verify --recheck-delay nan", ["verify", CONN, *META, "--recheck-delay", "nan"], 2, "not a finite number"),
    C("shadow report --limit -1", ["shadow", "report", CONN, "--limit", "-1"], 2, "--limit"),
    C("migrate --chunk-size 0", ["migrate", CONN, "--chunk-size", "0"], 2, "--chunk-size"),
    C("bench --copy-rows 0", ["bench", "--copy-rows", "0"], 2, "--copy-rows"),
    C("--metrics-port 70000", ["backfill", "run", CONN, *META, "--metrics-port", "70000"], 2, "--metrics-port"),
    C(
        "--metrics-host not on this machine",
        ["backfill", "run", CONN, *META, "--metrics-host", "203.0.113.7", "--metrics-port", "{dead_port}"],
        2,
        "cannot listen on 203.0.113.7",
    ),
    C("--metrics-port in use", ["backfill", "run", CONN, *META, "--metrics-port", "{busy_port}"], 2, "{busy_port}"),
    # -- options of one command ------------------------------------------------------------------------------
    C("migrate --on-error bogus", ["migrate", CONN, "--on-error", "bogus"], 2, "--on-error"),
    C("migrate --cast without =", ["migrate", CONN, "--cast", "x"], 2, "--cast"),
    C("migrate --cast to an unknown type", ["migrate", CONN, "--cast", "bf_notes.body=blobby"], 2, "blobby"),
    C("migrate --rename without =", ["migrate", CONN, "--rename", "x"], 2, "--rename"),
    C("bench --sections bogus", ["bench", "--sections", "bogus"], 2, "bogus"),
    C("unknown command", ["nosuchcommand"], 2, "nosuchcommand"),
    C("unknown option", ["status", CONN, "--bogus"], 2, "--bogus"),
    C("phase to an unknown phase", ["phase", CONN, "bogus"], 2, "bogus"),
    C(
        "redrive a dead letter that does not exist",
        ["backfill", "deadletters", "redrive", CONN, *META, "1-1"],
        2,
        "1-1",
    ),
    C("redrive a malformed id", ["backfill", "deadletters", "redrive", CONN, *META, "abc"], 2, "abc"),
    # -- where the report goes (refused before the work, not after it) ------------------------------------------
    C(
        "--report into a missing folder (backfill run)",
        ["backfill", "run", CONN, *META, "--report", MISSING],
        2,
        "does not exist",
    ),
    C(
        "--report into a missing folder (status)",
        ["backfill", "status", CONN, *META, "--report", MISSING],
        2,
        "--report",
    ),
    C("--report is a folder (verify)", ["verify", CONN, *META, "--report", "{root}"], 2, "is a directory"),
    C("--report into a missing folder (migrate)", ["migrate", CONN, "--report", MISSING], 2, "does not exist"),
    C(
        "--report into a missing folder (cutover check)",
        ["cutover", "check", CONN, *META, "--report", MISSING],
        2,
        "--report",
    ),
    C("--rejects into a missing folder", ["backfill", "run", CONN, *META, "--rejects", MISSING], 2, "--rejects"),
    # -- wrong results fixed at their cause ---------------------------------------------------------------
    C(
        "doctor with a Postgres role that cannot set session_replication_role",
        ["doctor", ConnWith(postgres="{weak_url}")],
        1,
        "session_replication_role",
    ),
    C(
        "verify finds differences (a summary line)",
        ["verify", CONN, *META],
        1,
        "verify: 3 of 3 table(s) differ (15 missing",
        writes=True,
    ),
    C("doctor with a file that is not SQLite", ["doctor", ConnWith(sqlite="{text}")], 1, "is not a database"),
    C(
        "status while Redis is down",
        ["status", ConnWith(redis="redis://127.0.0.1:{dead_port}/0")],
        1,
        "redis copy: unreachable",
    ),
    C(
        "a locked SQLite file (phase change)",
        ["phase", CONN, "sqlite", "--force"],
        1,
        "sqlite ({sqlite}): database is locked",
        locked=True,
    ),
    C("a locked SQLite file (init)", ["init", CONN], 2, "sqlite {sqlite}: database is locked", locked=True),
]


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
