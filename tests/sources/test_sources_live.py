"""Three SQLite store files of one application (the same table names in each; P0, P1, P2) consolidated live
into one Postgres, one source at a time, from a project file: a writer process on each file, the operator's
CLI in processes of its own. P2 reaches `postgres` while P0 is still in `dual_write`; P1 goes to
`postgres_reads` and is rolled back alone; `dualwrite status` shows every source; then the writers' logs,
each SQLite file and its Postgres schema agree row for row. Then `migrate` of the same files in priority
order (--dry-run, for real, --undo) leaves its target as it found it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from dualwrite.engines import Backends, sqlite_engine
from dualwrite.settings import load_settings
from tests.sources.conftest import ProjectFactory, schema_snapshot
from tests.userapp.compare import differences
from tests.userapp.fleet import ROOT, Fleet, env
from tests.userapp.models import Base
from tests.userapp.operator import dualwrite, ok, wait

SOURCES = {"alpha": "P0", "beta": "P1", "gamma": "P2"}
RATE = 8  # transactions per second per writer: light, the machine is shared


T0 = [time.monotonic()]


def step(what: str) -> None:
    print(f"{time.monotonic() - T0[0]:6.1f}s {what}")


def test_three_stores_moved_one_at_a_time_under_writers(project: ProjectFactory, tmp_path: Path) -> None:
    T0[0] = time.monotonic()
    config = str(project(SOURCES))
    cfg = ["--config", config]
    settings = {name: load_settings(env={}, config=config, source=name) for name in SOURCES}
    for s in settings.values():
        engine = sqlite_engine(s.sqlite_url)
        Base.metadata.create_all(engine)  # each store's own schema, made by the application
        engine.dispose()
    out = ok(dualwrite("init", *cfg, "--create-tables"))
    step("init")
    assert out.startswith("dualwrite: all 3 source(s) in priority order: alpha (P0), beta (P1), gamma (P2)"), out
    backends = {name: Backends(s) for name, s in settings.items()}
    fleet = Fleet(tmp_path)
    daemons: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for i, (name, s) in enumerate(settings.items(), 1):
            fleet.start(s, source=name, first_index=i, rate=RATE, reads=0.6, shadow=100, population=12, documents=0)
        fleet.wait_committed(5, timeout=90)  # history before any copy
        step("writers")

        out = ok(dualwrite("cutover", "flip", *cfg, "--postpone", "--deadline", "60", "--poll", "0.2"))
        assert out.count("moved: sqlite -> dual_write") == 3, out  # every source, in priority order
        for name in ("beta", "gamma"):
            err = (tmp_path / f"backfill-{name}.stderr").open("wb")
            daemons[name] = subprocess.Popen(
                [sys.executable, "-m", "dualwrite", "backfill", "run", "--daemon", *cfg, "--source", name,
                 "--chunk-size", "100", "--rejects", str(tmp_path / f"rejects-{name}.jsonl")],
                cwd=ROOT, env=env(), stdout=subprocess.DEVNULL, stderr=err,
            )  # fmt: skip
            err.close()

        def flip(selector: list[str], to: str, sources: int = 1) -> None:
            out = ok(dualwrite("cutover", "flip", *cfg, *selector, "--postpone", "--deadline", "90", "--poll", "0.2"))
            moved = [line for line in out.splitlines() if line.startswith("moved: ")]
            assert len(moved) == sources and all(line.endswith(f"-> {to}") for line in moved), out
            step(f"{selector} {to} ({out.count('waiting')} waits)")

        # P2 first, all the way, with P1 to postgres_reads and back; P0 stays in dual_write throughout.
        flip(["--priority", "P1", "--priority", "P2"], "shadow", 2)
        at = fleet.committed()
        fleet.wait_committed(3, more_than=at, timeout=60)  # shadow reads compare meanwhile
        out = ok(dualwrite("verify", *cfg, "--priority", "P1,P2"))
        assert out.startswith("dualwrite: priority P1,P2: 2 source(s) in priority order: beta (P1), gamma (P2)"), out
        flip(["--priority", "P1,P2", "--min-comparisons", "20"], "postgres_reads", 2)  # since the verify
        flip(["--source", "gamma", "--min-comparisons", "20"], "postgres_primary")
        flip(["--source", "gamma"], "postgres")
        out = ok(dualwrite("cutover", "rollback", *cfg, "--source", "beta", "--reason", "drill"))
        assert "postgres_reads -> shadow" in out, out
        phases = {name: b.phases.current(fresh=True).name for name, b in backends.items()}
        assert phases == {"alpha": "dual_write", "beta": "shadow", "gamma": "postgres"}, phases

        status = ok(dualwrite("status", *cfg))  # one row per source, plain lines (not a terminal)
        rows = {line.split()[0]: line.split() for line in status.splitlines()[2:]}
        assert {name: (r[1], r[2]) for name, r in rows.items()} == {
            name: (SOURCES[name], phase) for name, phase in phases.items()
        }, status
        lines = {line.split()[0]: line for line in status.splitlines()[2:]}
        assert " never " in lines["alpha"] and " clean, " in lines["beta"], status  # each verify's freshness
        step("status")

        at = fleet.committed()
        fleet.wait_committed(3, more_than=at, timeout=60)  # after the rollback too
        fleet.stop()
        assert fleet.errors() == {}, fleet.errors()
        assert fleet.total("read_errors") == 0 and fleet.total("read_disagreements") == 0, fleet.stats()
        # P0 was never copied: its copy and replay now, in one run that ends when caught up
        ok(dualwrite("backfill", "run", *cfg, "--source", "alpha", "--rejects", str(tmp_path / "rejects-alpha.jsonl")))

        step("alpha backfill")
        for name, b in backends.items():
            truth = b.postgres if name == "gamma" else b.sqlite_read
            state = fleet.state(truth=truth, source=name)
            assert state.rows["ledger"], name
            engines = {"sqlite": b.sqlite_read, "postgres": b.postgres}
            wait(
                f"{name}: both sides to agree with the writers' log",
                lambda state=state, engines=engines: (
                    not [d for k, e in engines.items() for d in differences(state, e, k)]
                ),
                timeout=90.0,
                every=0.3,
            )
        for name, daemon in daemons.items():
            daemon.terminate()
            assert daemon.wait(60) == 0, (tmp_path / f"backfill-{name}.stderr").read_text()[-3000:]
    finally:
        fleet.kill()
        for daemon in daemons.values():
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait()
        for b in backends.values():
            b.close()

    step("compared")
    # The same files, migrated one-shot into one database, then undone.
    target = str(project(SOURCES, name="migrate.toml", schema_prefix="m_", models=None))
    prefix = settings["alpha"].pg_schema.removesuffix("alpha") + "m_"
    before = schema_snapshot(prefix)
    out = ok(dualwrite("migrate", "--config", target, "--dry-run"))
    assert out.startswith("dualwrite: all 3 source(s) in priority order") and schema_snapshot(prefix) == before, out
    out = ok(dualwrite("migrate", "--config", target, "--rejects", str(tmp_path / "migrate-rejects")))
    assert [line.split(":")[0] for line in out.splitlines() if line.startswith("[")] == [
        "[1/3] source alpha (P0)",
        "[2/3] source beta (P1)",
        "[3/3] source gamma (P2)",
    ], out
    assert "every table of every source verified" in out, out
    ok(dualwrite("migrate", "--config", target, "--undo", "--yes"))
    assert schema_snapshot(prefix) == before
    step("migrate")
