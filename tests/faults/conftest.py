"""Fixtures for the fault-injection suite (issue 9): a private Postgres cluster and private Redis servers
(never the shared ones on 5432/6379), a helper that heals and fully verifies both sides, and a
session-scoped collector that writes reports/reliability.md (with DW_FAULTS_REPORT=1)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Table, create_engine, text

from dualwrite.adapter import DualWriter
from dualwrite.redis_keys import dead_letter_key
from dualwrite.settings import Settings
from dualwrite.stream.relay import Relay
from dualwrite.stream.replay import Replayer
from dualwrite.verify.verifier import verify_tables
from tests.servers import PrivatePostgres, PrivateRedis, private_cluster, wait_for

ROOT = Path(__file__).resolve().parents[2]
REPORT = ROOT / "reports" / "reliability.md"
SEEDS = (1, 2)
SOAK_SEEDS = tuple(range(3, 11))
# the quick seeds, plus the soak seeds marked soak (skipped unless --soak)
SEEDS_AND_SOAK = (*SEEDS, *(pytest.param(s, marks=pytest.mark.soak) for s in SOAK_SEEDS))

__all__ = [
    "PrivatePostgres",
    "PrivateRedis",
    "wait_for",
    "heal_and_verify",
    "Outcome",
    "SEEDS",
    "SOAK_SEEDS",
    "SEEDS_AND_SOAK",
]


# -- the collector -----------------------------------------------------------------------------------
@dataclass
# a declarative field list (shaped like backfill.steps.TableReport's, nothing shared)
class CaseRecord:
    fault: str
    runs: int = 0
    rows_during_fault: int = 0
    rows_lost: int = 0
    rows_diverged: int = 0
    diverged_before: int = 0
    recovery_seconds: list[float] = field(default_factory=list)
    notes: set[str] = field(default_factory=set)


class Collector:
    def __init__(self) -> None:
        self.cases: dict[str, CaseRecord] = {}
        self.bad_input: dict[str, str] = {}
        self.cli_bad_input: dict[str, tuple[str, int, str]] = {}  # case -> (command, exit code, the line shown)
        self.security: dict[str, str] = {}

    def case(
        self,
        fault: str,
        *,
        rows_during_fault: int,
        rows_lost: int,
        rows_diverged: int,
        recovery_seconds: float,
        note: str | None = None,
        diverged_before: int = 0,
    ) -> None:
        rec = self.cases.setdefault(fault, CaseRecord(fault))
        rec.runs += 1
        rec.rows_during_fault += rows_during_fault
        rec.rows_lost += rows_lost
        rec.rows_diverged += rows_diverged
        rec.diverged_before += diverged_before
        rec.recovery_seconds.append(recovery_seconds)
        if note:
            rec.notes.add(note)

    def healed(
        self,
        fault: str,
        out: Outcome,
        *,
        rows_during_fault: int,
        note: str,
        recovery_seconds: float | None = None,
        diverged_before: int | None = None,
    ) -> None:
        """A case that ended in `heal_and_verify`: rows lost and diverged are its outcome's; the recovery time
        and the divergence before the heal are too unless given."""
        self.case(
            fault,
            rows_during_fault=rows_during_fault,
            rows_lost=out.missing,
            rows_diverged=out.differing + out.extra,
            diverged_before=out.diverged_before if diverged_before is None else diverged_before,
            recovery_seconds=out.seconds if recovery_seconds is None else recovery_seconds,
            note=note,
        )

    def cli_section(self) -> list[str]:
        """The CLI's bad-input table (tests/faults/test_cli_bad_input.py), one row per case."""
        rows = self.cli_bad_input
        lines = [
            CLI_HEADING,
            "",
            f"{len(rows)} bad inputs to the `dualwrite` commands (`tests/faults/test_cli_bad_input.py`), each its own",
            "test: the exit code is the documented one (2 usage/configuration, 1 a check failed), the line names",
            "what and where, no traceback, no password (the Postgres URL carries one), and nothing changed (SQLite",
            "file, both Postgres schemas, the Redis namespace, the folder's files; a mistyped path is never created).",
            "",
            "| input | command | exit | what it says |",
            "|---|---|---|---|",
        ]
        for name, (command, code, line) in rows.items():
            said = line.replace("|", "\\|")
            lines.append(f"| {name} | `{command}` | {code} | {said} |")
        return lines

    def write(self) -> None:
        if not self.cases and self.cli_bad_input:  # only the CLI table ran: replace its section alone
            REPORT.write_text(splice(REPORT.read_text(encoding="utf-8"), self.cli_section()), encoding="utf-8")
            return
        if not (self.cases or self.bad_input or self.security):
            return
        lines = [
            "# Reliability report (issue 9: fault injection)",
            "",
            f"Generated by `pytest tests/faults` on {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}.",
            "Every case ends with a full verification of both sides (`shadow.verify.verify_tables`:",
            "no missing/extra/differing row),",
            "the outbox drained (relay backlog 0) and the dead letters counted against the expected number.",
            "Rows lost = rows committed on the primary and absent from Postgres after recovery; rows diverged =",
            "rows present on both sides with different values, both after recovery. Diverged before heal = rows",
            "missing/extra/differing on Postgres when the fault ended (what relay + replay + backfill then healed).",
            "Recovery = measured from the end of the fault to both sides verified equal.",
            "",
            "## Fault × outcome",
            "",
            "| fault | runs | rows written during fault | diverged before heal | rows lost | rows diverged "
            "| recovery s (max) | notes |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for rec in sorted(self.cases.values(), key=lambda r: r.fault):
            lines.append(
                f"| {rec.fault} | {rec.runs} | {rec.rows_during_fault} | {rec.diverged_before} | {rec.rows_lost} "
                f"| {rec.rows_diverged} | "
                f"{max(rec.recovery_seconds):.2f} | {'; '.join(sorted(rec.notes))} |"
            )
        lines += ["", "## Bad input × handling", "", "| input | handling |", "|---|---|"]
        for kind, how in sorted(self.bad_input.items()):
            lines.append(f"| {kind} | {how} |")
        if self.cli_bad_input:
            lines += ["", *self.cli_section()]
        elif REPORT.exists() and CLI_HEADING in REPORT.read_text(encoding="utf-8"):  # kept from its own run
            lines += ["", *section(REPORT.read_text(encoding="utf-8"), CLI_HEADING)]
        lines += ["", "## Security: the Postgres password", "", "| where | result |", "|---|---|"]
        for where, res in sorted(self.security.items()):
            lines.append(f"| {where} | {res} |")
        lines += [
            "",
            "## Bugs found (reproduced by strict xfail tests in tests/faults)",
            "",
            "| test | bug |",
            "|---|---|",
        ]
        for name, reason in sorted(XFAILS.items()):
            lines.append(f"| `{name}` | {reason.removeprefix('BUG: ')} |")
        if not XFAILS:
            lines.append("| – | none open: every bug these tests found is fixed and its test passes |")
        REPORT.parent.mkdir(exist_ok=True)
        REPORT.write_text("\n".join(lines) + "\n", encoding="utf-8")


XFAILS: dict[str, str] = {}
CLI_HEADING = "## Bad input × handling: the CLI"


def section(text: str, heading: str) -> list[str]:
    """The lines of `heading`'s section of a markdown text, up to the next `## ` heading (without blank tail)."""
    lines = text.splitlines()
    start = lines.index(heading)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    out = lines[start:end]
    while out and not out[-1].strip():
        out.pop()
    return out


def splice(text: str, new: list[str]) -> str:
    """`text` with the CLI section replaced by `new` (or put before the security section)."""
    lines = text.splitlines()
    if CLI_HEADING in lines:
        old = section(text, CLI_HEADING)
        start = lines.index(CLI_HEADING)
        lines[start : start + len(old)] = new
    else:
        at = next((i for i, line in enumerate(lines) if line.startswith("## Security")), len(lines))
        lines[at:at] = [*new, ""]
    return "\n".join(lines) + "\n"


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    reason = getattr(report, "wasxfail", "")
    if reason and report.when == "call":
        XFAILS[report.nodeid.split("::", 1)[-1]] = reason.removeprefix("reason: ")


@pytest.fixture(scope="session")
def collector() -> Iterator[Collector]:
    c = Collector()
    yield c
    # Opt-in, so a partial run (one file, -k) never overwrites the committed report of a full one:
    # DW_FAULTS_REPORT=1 python3 -m pytest tests/faults [--soak]
    if os.environ.get("DW_FAULTS_REPORT") == "1":
        c.write()


# -- private servers ---------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def private_pg_cluster() -> Iterator[PrivatePostgres]:
    with private_cluster() as cluster:
        yield cluster


@pytest.fixture
def pg(private_pg_cluster: PrivatePostgres) -> Iterator[PrivatePostgres]:
    """The private cluster, guaranteed running at the start and the end of each test."""
    _ensure_running(private_pg_cluster)
    yield private_pg_cluster
    _ensure_running(private_pg_cluster)


def _ensure_running(cluster: PrivatePostgres) -> None:
    eng = create_engine(cluster.url, connect_args={"connect_timeout": 2})
    try:
        with eng.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception:  # noqa: BLE001 - stopped by a test: start it again
        cluster.start()
    finally:
        eng.dispose()


@pytest.fixture
def fsettings(settings: Settings, pg: PrivatePostgres, private_redis: PrivateRedis) -> Settings:
    """Settings on the private servers (a fresh schema in the private cluster, a private Redis)."""
    s = settings.with_(postgres_url=pg.url, redis_url=private_redis.url)
    admin = create_engine(pg.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{s.pg_schema}"'))
    admin.dispose()
    return s


# -- heal + verify ---------------------------------------------------------------------------------
@dataclass
class Outcome:
    missing: int
    extra: int
    differing: int
    backlog: int
    dead_letters: int
    seconds: float
    report: Any
    diverged_before: int = 0


def count_rows(engine: Any, table: Table) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM {table.name}")).scalar())


def dead_letter_count(dw: DualWriter) -> int:
    return int(dw.backends.redis.xlen(dead_letter_key(dw.settings.namespace)))


def heal_and_verify(
    dw: DualWriter,
    tables: list[Table] | tuple[Table, ...],
    *,
    since: float,
    replay: bool = True,
    expected_dead: int = 0,
    timeout: float = 60.0,
) -> Outcome:
    """Measure the divergence left by the fault, then drain the outbox to the stream, replay the stream
    (a fresh consumer; the group is created if missing), then verify both sides in full.
    Asserts: clean, backlog 0, dead letters as expected."""
    pre = verify_tables(list(tables), dw.backends.sqlite_read, dw.backends.postgres)
    before = sum(sum(t.counts().values()) for t in pre.tables)
    relay = Relay.for_backends(dw.backends)
    assert relay.drain(timeout=timeout), f"outbox not drained, backlog {relay.backlog}"
    if replay:
        rp = Replayer(dw.backends, dw.tables, consumer="verifier", claim_idle_ms=100, block_ms=50)
        deadline = time.monotonic() + timeout
        rp.run(once=True, should_stop=lambda: time.monotonic() > deadline)
        assert rp.caught_up(), "the replayer did not catch up"
    report = verify_tables(list(tables), dw.backends.sqlite_read, dw.backends.postgres)
    seconds = time.monotonic() - since
    missing = sum(t.counts()["missing"] for t in report.tables)
    extra = sum(t.counts()["extra"] for t in report.tables)
    differing = sum(t.counts()["differing"] for t in report.tables)
    out = Outcome(missing, extra, differing, relay.backlog, dead_letter_count(dw), seconds, report, before)
    assert report.clean, report.to_dict()
    assert relay.backlog == 0
    assert out.dead_letters == expected_dead, out
    return out
