"""Schema changes during a live cutover with Alembic (dualwrite.alembic): one revision applied to both
backends while the application writes in phase dual_write and a backfill worker replays, in the expand
order (DDL on both, then the worker, then the application): nothing dead-lettered, verify clean, and
autogenerate never proposes to touch dualwrite's own tables."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, func, insert, inspect, select, text, update

from dualwrite.adapter import DualWriter
from dualwrite.alembic import filters, include_object
from dualwrite.redis_keys import dead_letter_key, stream_key
from dualwrite.testing import prepared_writer
from dualwrite.verify.verifier import verify_backends
from tests.conftest import connection_args, connection_env
from tests.core.alembic_app import ENV, REVISION, md1, md2, v1, v2
from tests.servers import wait_for

alembic = pytest.importorskip("alembic", reason="alembic not installed (the dev extra installs it)")
ROOT = Path(__file__).resolve().parents[2]


def project(tmp: Path) -> Path:
    """An application's migrations folder: alembic.ini, env.py with run_on_both, one revision."""
    (tmp / "versions").mkdir(parents=True)
    (tmp / "env.py").write_text(ENV)
    (tmp / "versions" / "0002_rating_and_tags.py").write_text(REVISION)
    ini = tmp / "alembic.ini"
    ini.write_text(f"[alembic]\nscript_location = {tmp}\n")
    return ini


def run_alembic(settings, ini: Path, *args: str) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def,type-arg]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUALWRITE_")}
    env |= {"PYTHONPATH": str(ROOT), **connection_env(settings)}
    argv = [sys.executable, "-m", "alembic", "-c", str(ini), *args]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)


def worker(settings, version: str, tmp: Path) -> subprocess.Popen:  # type: ignore[no-untyped-def,type-arg]
    argv = [sys.executable, "-m", "dualwrite", "backfill", "run", *connection_args(settings), "--daemon"]
    argv += ["--metadata", f"tests.core.alembic_app:{version}", "--consumer", f"worker-{version}"]
    argv += ["--rejects", str(tmp / f"rejects-{version}.jsonl")]
    log = (tmp / f"worker-{version}.log").open("w")
    return subprocess.Popen(argv, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=log, stderr=subprocess.STDOUT)


class Writes:
    """The application: notes inserted, edited, linked and some deleted (links go by cascade); once on the
    new model, ratings and tags too. `writer` is swapped when the new model is deployed."""

    def __init__(self, dw: DualWriter) -> None:
        self.writer, self.v2 = dw, False
        self.stop, self.errors, self.n = threading.Event(), [], 1000
        self.lock = threading.Lock()  # held for one round of writes: deploy() swaps between rounds
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def deploy(self, dw: DualWriter) -> DualWriter:
        """The new model's writer from the next round on; returns the old one (no round of it in flight)."""
        with self.lock:
            old, self.writer, self.v2 = self.writer, dw, True
        return old

    def _loop(self) -> None:
        deadline = time.monotonic() + 120
        while not self.stop.is_set() and time.monotonic() < deadline:
            with self.lock:
                self._round()
            time.sleep(0.005)

    def _round(self) -> None:
        dw, v2, i = self.writer, self.v2, self.n
        self.n += 1
        notes, links = dw.tables.table("al_notes"), dw.tables.table("al_links")
        try:
            row: dict[str, Any] = {"id": i, "body": f"note {i}"}
            if v2:
                row["rating"] = i % 6
            dw.execute(insert(notes).values(**row))
            dw.execute(insert(links).values(note_id=i, url=f"https://example.org/{i}"))
            dw.execute(update(notes).where(notes.c.id == i - 3).values(body=f"edited {i}"))
            if v2:
                dw.execute(insert(dw.tables.table("al_tags")).values(note_id=i, tag="fresh"))
            if i % 5 == 0:
                dw.execute(delete(notes).where(notes.c.id == i - 7))
        except Exception as exc:  # noqa: BLE001 - the test reports them
            self.errors.append(f"{type(exc).__name__}: {exc}")


def _settled(dw: DualWriter) -> bool:
    groups = dw.backends.redis.xinfo_groups(stream_key(dw.settings.namespace))
    return bool(groups) and all(g.get("lag") == 0 and g.get("pending") == 0 for g in groups)


def test_a_column_and_a_table_added_mid_dual_write(settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    ini = project(tmp_path / "migrations")
    dw1 = prepared_writer(settings, v1, phase="dual_write", relay=True)
    with dw1.backends.sqlite.begin() as conn:  # history from before dualwrite
        conn.execute(insert(md1.tables["al_notes"]), [{"id": i, "body": f"old {i}"} for i in range(1, 301)])
        conn.execute(insert(md1.tables["al_links"]), [{"note_id": i, "url": f"https://old/{i}"} for i in range(1, 301)])
    writes = Writes(dw1)
    old = worker(settings, "v1", tmp_path)
    dw2 = None
    try:
        writes.thread.start()
        wait_for(lambda: writes.n > 1050, 30, "the application is writing")
        r = run_alembic(settings, ini, "upgrade", "head")  # expand: the DDL on both, under traffic
        assert r.returncode == 0, r.stdout + r.stderr
        for engine in (dw1.backends.sqlite, dw1.backends.postgres):
            with engine.connect() as conn:
                assert "rating" in {c["name"] for c in inspect(conn).get_columns("al_notes")}
                assert inspect(conn).has_table("al_tags")
                assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0002"
        old.send_signal(signal.SIGTERM)  # then the worker on the new model ...
        assert old.wait(timeout=60) == 0
        new = worker(settings, "v2", tmp_path)
        try:
            dw2 = DualWriter(settings, v2, relay=True)  # ... then the application
            writes.deploy(dw2).close()
            wait_for(lambda: writes.errors or _tags(dw2) >= 50, 60, "v2 writes")
            writes.stop.set()
            writes.thread.join(30)
            wait_for(lambda: _settled(dw2), 60, "the worker caught up")
            report = verify_backends(dw2.backends, v2.tables())
        finally:
            new.send_signal(signal.SIGTERM)
            new.wait(timeout=60)
        assert not writes.errors, writes.errors[:5]
        assert report.clean, report.to_dict()
        assert dw2.backends.redis.xlen(dead_letter_key(settings.namespace)) == 0
        with dw2.backends.postgres.connect() as conn:
            notes = md2.tables["al_notes"]
            assert conn.execute(select(func.count()).where(notes.c.rating.is_not(None))).scalar() > 0
            assert conn.execute(select(func.count()).select_from(md2.tables["al_links"])).scalar() > 300
        r = run_alembic(settings, ini, "check")  # autogenerate on both: the models match, _dw_* untouched
        assert r.returncode == 0 and "No new upgrade operations detected" in r.stdout + r.stderr, r.stdout + r.stderr
    finally:
        writes.stop.set()
        if old.poll() is None:
            old.kill()
        for w in (dw1, dw2):
            if w is not None:
                w.close()


def _tags(dw: DualWriter) -> int:
    with dw.backends.sqlite_read.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(md2.tables["al_tags"])).scalar() or 0)


def test_autogenerate_never_proposes_dualwrites_tables(settings) -> None:  # type: ignore[no-untyped-def]
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with prepared_writer(settings, v2, phase="dual_write") as dw:
        hooks = filters(settings.state_schema)
        for engine in (dw.backends.sqlite, dw.backends.postgres):
            with engine.connect() as conn:
                assert compare_metadata(MigrationContext.configure(conn, opts=hooks), md2) == []
                conn.rollback()
        with dw.backends.sqlite.connect() as conn:  # without the hooks: drop dualwrite's outbox, versions, meta
            unfiltered = compare_metadata(MigrationContext.configure(conn), md2)
            assert {d[1].name for d in unfiltered if d[0] == "remove_table"} == {
                "_dw_outbox",
                "_dw_versions",
                "_dw_meta",
            }
            conn.rollback()
        # the module-level hook (default state schema) for env.py's own context.configure
        own = md1.tables["al_notes"].to_metadata(type(md1)(), name="_dw_outbox")
        assert include_object(own, "_dw_outbox", "table", True, None) is False
        assert include_object(md2.tables["al_tags"], "al_tags", "table", False, None) is True
        assert hooks["include_name"](settings.state_schema, "schema", {}) is False
