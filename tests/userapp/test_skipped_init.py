"""An operator who skips `dualwrite init` and follows the tool's own output, while the application, still
without dualwrite (tests/userapp/plain.py: its own SQLAlchemy engine), keeps writing its SQLite file.

1. Before init, the operator runs what a person would reach for first: the copy, its status, the gate, the
   flip, a verify, doctor, status. Each answers without a traceback, with its exit code (2 a refusal of
   usage/configuration, 1 a failed check, 0 a report), and names the next step as a command to run: the
   same `dualwrite init` for all of them, with the tables flag carried over. None of them leaves anything
   of dualwrite's in the application's SQLite file or on Postgres.
2. The operator runs that step as printed (connection flags as DUALWRITE_* variables, as the README has
   it) while the plain writers go on.
3. The application moves onto the adapter: its writers stop and start again under their names as
   DualWriter writers (each goes on in its own log). The cutover then runs to postgres_primary under their
   traffic, each command the one the previous command printed (init: the flip; the flip to dual_write: the
   copy and the next flip; the flip to shadow: verify; verify: the check; the check: the flip), the
   operator adding only flags of their own (--postpone); the backfill daemon copies the rows the plain
   writers wrote before the move. Wall time: 41 s at load 7, 173 s at load 12 on this 2-core box.

At the end no write failed, and both databases hold exactly what the plain and the adapter writers
committed.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from dualwrite.cutover.gate import GateConfig, backfill_complete, replay_lag, shadow_mismatch_rate
from dualwrite.engines import Backends, pg_engine
from dualwrite.settings import Settings
from tests.conftest import connection_env
from tests.userapp.fleet import Fleet
from tests.userapp.models import Base
from tests.userapp.operator import METADATA, dualwrite, printed_steps, start_daemon, step_args, stop_all, wait
from tests.userapp.plain import plain_engine
from tests.userapp.writer import tables

RATE = 10  # transactions per second per writer
PER_STEP = 10  # transactions per writer between two operator steps
FLAG = " ".join(METADATA)
INIT = f"dualwrite init {FLAG} --create-tables"
# what the operator tries before init, and the exit code each must give
BEFORE_INIT = [
    (["backfill", "run", *METADATA, "--daemon"], 2),
    (["backfill", "status", *METADATA], 2),
    (["cutover", "check", *METADATA], 1),
    (["cutover", "flip", *METADATA], 1),
    (["verify", *METADATA], 2),
    (["doctor", *METADATA], 1),
    (["status", *METADATA], 0),
]


def ours(settings: Settings) -> dict[str, list[str]]:
    """What of dualwrite's is in the application's SQLite file and on Postgres: tables in the application's
    schema (the user's, empty: the test made it) and the state schema, and the state schema itself."""
    lite = plain_engine(settings.sqlite_url)
    found = {"sqlite": [t for t in inspect(lite).get_table_names() if t not in Base.metadata.tables]}
    lite.dispose()
    pg = pg_engine(settings, pool_size=1)
    with pg.connect() as conn:
        schemas = [settings.pg_schema, settings.state_schema]
        sql = "SELECT table_schema || '.' || table_name FROM information_schema.tables WHERE table_schema = ANY(:s)"
        found["postgres"] = sorted(conn.execute(text(sql), {"s": schemas}).scalars())
        sql = "SELECT schema_name FROM information_schema.schemata WHERE schema_name = :s"
        found["schemas"] = sorted(conn.execute(text(sql), {"s": settings.state_schema}).scalars())
    pg.dispose()
    return found


def follow(environ: dict[str, str], tmp: Path, step: str, *extra: str, rc: int = 0) -> list[str]:
    """Run a printed step as it is (plus `extra` flags); the steps its output names next."""
    start = time.monotonic()
    proc = dualwrite(*step_args(step), *extra, environ=environ)
    out = proc.stdout + proc.stderr
    with (tmp / "operator.log").open("a") as log:
        log.write(f"== {step} {' '.join(extra)}: exit {proc.returncode} in {time.monotonic() - start:.1f}s\n{out}\n")
    assert proc.returncode == rc and "Traceback" not in out, f"{step}: exit {proc.returncode}\n{out}"
    return printed_steps(out)


@pytest.mark.timeout(600)  # about a minute on a quiet machine
def test_an_operator_who_skips_init_is_led_to_it_and_through_the_cutover(settings: Settings, tmp_path: Path) -> None:
    app_db = plain_engine(settings.sqlite_url)
    Base.metadata.create_all(app_db)  # the application's own schema, made by the application
    app_db.dispose()
    environ = connection_env(settings)
    backends = None
    fleet = Fleet(tmp_path)
    daemon = None
    try:
        fleet.start(settings, count=2, rate=RATE, plain=True, population=20, documents=0.05)
        fleet.wait_committed(PER_STEP)

        def traffic() -> None:
            fleet.wait_committed(PER_STEP, more_than=fleet.committed(), timeout=60)

        # 1. Everything but init, before init: each names init as what to run, and creates nothing.
        for command, rc in BEFORE_INIT:
            start = time.monotonic()
            proc = dualwrite(*command, environ=environ)
            out = proc.stdout + proc.stderr
            with (tmp_path / "operator.log").open("a") as log:
                log.write(f"== {' '.join(command)}: exit {proc.returncode} in {time.monotonic() - start:.1f}s\n{out}\n")
            assert proc.returncode == rc and "Traceback" not in out, (command, proc.returncode, out)
            steps = printed_steps(out)
            assert steps and steps[0].split("  #")[0] == INIT, (command, out)
            if rc == 2:  # a refusal is its one line
                assert len(out.strip().splitlines()) == 1, (command, out)
        assert ours(settings) == {"sqlite": [], "postgres": [], "schemas": []}

        # 2. init as printed, under the plain writers' traffic.
        steps = follow(environ, tmp_path, INIT)
        traffic()
        # 3. The application moves onto the adapter: the same writers, restarted on DualWriter.
        fleet.stop()
        assert fleet.errors() == {}, fleet.errors()
        fleet.start(settings, count=2, first_index=1, rate=RATE, reads=1.0, shadow=100, population=20, documents=0.05)
        traffic()
        backends = Backends(settings)
        app = tables()

        (step,) = steps  # init's: the flip to dual_write, now that the application writes through DualWriter
        assert step.startswith(f"dualwrite cutover flip {FLAG}  # to dual_write"), step
        copy, flip = follow(environ, tmp_path, step)  # the copy (with the replay), then the flip to shadow
        assert step_args(copy) == ["backfill", "run", *METADATA, "--daemon"], copy
        daemon = start_daemon(settings, tmp_path, "--chunk-size", "200")  # that command, its stderr kept
        wait("every table copied", lambda: backfill_complete(backends, app, GateConfig()).ok, 60, 0.3)
        verify, flip = follow(environ, tmp_path, flip)[:2]  # shadow: a verify, then the flip to postgres_reads
        (check,) = follow(environ, tmp_path, verify)
        # the gate counts shadow comparisons since that verify: the writers' reads make them
        wait("comparisons since the verify", lambda: shadow_mismatch_rate(backends, app, GateConfig()).ok, 60, 0.3)
        (flip,) = follow(environ, tmp_path, check)
        assert flip.startswith(f"dualwrite cutover flip {FLAG}  # to postgres_reads"), flip
        postponed = ("--postpone", "--deadline", "60", "--poll", "0.2")  # a fence that times out under load: again
        flip = follow(environ, tmp_path, flip, *postponed)[0]
        traffic()
        last = follow(environ, tmp_path, flip, *postponed)  # to postgres_primary; next would be postgres alone
        assert last[0] == f"dualwrite cutover flip {FLAG}", last
        traffic()
        fleet.check_alive()
        fleet.stop()

        assert fleet.errors() == {}, fleet.errors()
        assert fleet.total("read_errors") == 0 and fleet.total("read_disagreements") == 0, fleet.stats()
        phases = {p for s in fleet.stats().values() for p in s["phases"]}
        assert {"dual_write", "shadow", "postgres_reads", "postgres_primary"} <= phases, phases
        wait("the replay to catch up", lambda: replay_lag(backends, app, GateConfig(max_replay_lag=0)).ok, 60, 0.3)
        # every write the plain writers and then the adapter writers committed, on both sides, exactly
        fleet.assert_agree({"postgres": backends.postgres, "sqlite": backends.sqlite_read}, truth=backends.postgres)
        print(f"\n{fleet.total('committed')} tx after the move, {sum(1 for _ in fleet.logs())} logs")
    finally:
        if backends is None:
            fleet.kill()
            rc = None
        else:
            rc = stop_all(fleet, daemon, backends)
    assert rc in (None, 0), (tmp_path / "backfill.stderr").read_text()[-3000:]
