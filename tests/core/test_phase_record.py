"""The phase of record lives in both databases; Redis is its fast copy (issue 14). After Redis restarts
empty every process and the CLI find the real phase without --force; an instance started then in
postgres_primary writes Postgres first; nothing readable means `unknown` and no write."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import insert, select, text, update

from dualwrite.adapter import DualWriter
from dualwrite.cli.main import main
from dualwrite.cutover.flip import flip, rollback
from dualwrite.errors import PhaseError, PhaseUnknownError
from dualwrite.phase_record import read_record
from dualwrite.settings import Settings
from dualwrite.stream.replay import Replayer
from dualwrite.testing import prepared_writer
from tests.conftest import connection_args
from tests.core.support import catalog, items, row
from tests.servers import PrivateRedis

ROOT = Path(__file__).resolve().parents[2]
KEYS = ("sqlite_url", "postgres_url", "redis_url", "namespace", "pg_schema", "state_schema")


def _records(dw: DualWriter) -> dict[str, tuple[str, int] | None]:
    out = {}
    for side in ("sqlite", "postgres"):
        with dw.backends.read_engine(side).connect() as conn:
            rec = read_record(conn)
            out[side] = None if rec is None else (rec.phase, rec.epoch)
    return out


def _outbox(dw: DualWriter, side: str) -> list[int]:
    with dw.backends.read_engine(side).connect() as conn:
        return [r[0] for r in conn.execute(text("SELECT seq FROM _dw_outbox ORDER BY seq"))]


def _flip_to(dw: DualWriter, target: str) -> None:
    while dw.phases.current(fresh=True).name != target:
        out = flip(dw.backends, dw.tables, force=True, reason="test")
        assert out.moved, out.message


def test_every_change_is_recorded_on_both_sides(settings: Settings) -> None:
    with prepared_writer(settings, catalog(), phase="sqlite") as dw:
        first = dw.phases.epoch
        assert _records(dw) == {"sqlite": ("sqlite", first), "postgres": ("sqlite", first)}
        _flip_to(dw, "postgres_primary")  # the last step moves the primary: recorded in the switch's commits
        assert _records(dw) == {"sqlite": ("postgres_primary", first + 4), "postgres": ("postgres_primary", first + 4)}
        assert dw.backends.redis.mget(dw.phases.key, dw.phases.epoch_key) == [b"postgres_primary", b"%d" % (first + 4)]
        Replayer(dw.backends, dw.tables, target="sqlite").ensure_group()  # the fenced rollback needs a replay
        assert rollback(dw.backends, dw.tables, reason="test").moved
        assert _records(dw)["postgres"] == ("shadow", first + 5) == _records(dw)["sqlite"]  # primary back: SQLite


def test_a_redis_restart_loses_no_phase(settings: Settings, private_redis: PrivateRedis) -> None:
    s = settings.with_(redis_url=private_redis.url)
    dw = prepared_writer(s, catalog(), phase="dual_write")
    running = DualWriter(s, catalog())  # an instance running through the restart
    try:
        _flip_to(dw, "postgres_primary")
        running.execute(insert(items).values(row(1, 1)))
        assert _outbox(dw, "postgres") != [] and running.phases.current().name == "postgres_primary"
        private_redis.stop()
        private_redis.start()  # empty: this Redis keeps nothing on disk
        assert dw.backends.redis.get(dw.phases.key) is None

        # the CLI, without --force: the real phase, from the record
        res = CliRunner().invoke(main, ["status", *connection_args(s)])
        assert res.exit_code == 0 and "phase: postgres_primary" in res.output and "from record" in res.output, (
            res.output
        )
        # ... and it put the record back as Redis' copy
        assert dw.backends.redis.get(dw.phases.key) == b"postgres_primary"
        res = CliRunner().invoke(main, ["phase", *connection_args(s)])
        assert res.exit_code == 0 and res.output.startswith("phase: postgres_primary"), res.output

        # an instance started after the restart writes Postgres first
        pg_before, lite_before = _outbox(dw, "postgres"), _outbox(dw, "sqlite")
        dw.backends.redis.delete(dw.phases.key, dw.phases.epoch_key)  # empty again, for the newcomer
        fresh = DualWriter(s, catalog())
        try:
            fresh.execute(insert(items).values(row(2, 2)))
            assert fresh.phases.current().name == "postgres_primary" and fresh.phases.source == "record"
        finally:
            fresh.close()
        assert len(_outbox(dw, "postgres")) == len(pg_before) + 1 and _outbox(dw, "sqlite") == lite_before
        running.execute(update(items).where(items.c.id == 2).values(name="still postgres"))
        assert len(_outbox(dw, "postgres")) == len(pg_before) + 2
        with dw.backends.sqlite_read.connect() as conn:  # the secondary got both
            assert conn.execute(select(items.c.name).where(items.c.id == 2)).scalar() == "still postgres"
        # and the phase moves on from there without --force
        out = flip(dw.backends, dw.tables, force=False, reason="test")
        assert out.current == "postgres" or out.message.startswith("refusing postgres_primary -> postgres")
    finally:
        running.close()
        dw.close()


def test_unknown_when_nothing_can_be_read(settings: Settings, private_redis: PrivateRedis, tmp_path: Path) -> None:
    s = settings.with_(redis_url=private_redis.url)
    dw = prepared_writer(s, catalog(), phase="dual_write")
    dw.close()
    private_redis.stop()
    # a SQLite file that exists (a missing one is refused before anything) but cannot be read
    broken = tmp_path / "broken.db"
    broken.write_bytes(b"SQLite format 3\x00" + b"\xff" * 200)
    gone = s.with_(postgres_url="postgresql://postgres@127.0.0.1:1/none", sqlite_url=f"sqlite:///{broken}")
    for command in ("status", "phase"):
        res = CliRunner().invoke(main, [command, *connection_args(gone)])
        assert res.exit_code == 1, res.output
        first = res.output.splitlines()[0]
        assert first.startswith("phase: unknown (the phase of record cannot be read (sqlite: "), first
        assert "postgres: " in first and "redis: " in first and "sqlite" not in first.split("(", 1)[0]
    writer = DualWriter(gone, catalog())
    try:
        with pytest.raises(PhaseUnknownError):
            writer.execute(insert(items).values(row(1, 1)))  # does not write on a guess
    finally:
        writer.close()


def test_without_redis_the_record_still_reaches_a_new_instance(settings: Settings, private_redis: PrivateRedis) -> None:
    """Redis down from the start: a new instance reads the record from the databases and writes."""
    s = settings.with_(redis_url=private_redis.url)
    dw = prepared_writer(s, catalog(), phase="dual_write")
    dw.close()
    private_redis.stop()
    fresh = DualWriter(s, catalog())
    try:
        fresh.execute(insert(items).values(row(3, 3)))
        assert fresh.phases.current().name == "dual_write" and not fresh.phases.redis_ok
        with fresh.backends.postgres.connect() as conn:  # dual_write: applied inline
            assert conn.execute(select(items.c.id)).scalars().all() == [3]
    finally:
        fresh.close()


def test_a_concurrent_change_is_refused_not_lost(settings: Settings) -> None:
    dw = prepared_writer(settings, catalog(), phase="sqlite")
    other = DualWriter(settings, catalog())
    try:
        rec, _prev = other.phases.prepare("dual_write")  # another operator's change, in flight
        dw.phases.set("dual_write", reason="first")
        with pytest.raises(PhaseError, match="another phase change happened meanwhile"):
            other.phases.record.write(rec)
    finally:
        other.close()
        dw.close()


CHILD = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, {root!r})
    from sqlalchemy import insert
    from dualwrite.adapter import DualWriter
    from dualwrite.settings import Settings
    from tests.core.support import catalog, items, row

    dw = DualWriter(Settings(**json.loads(sys.argv[1])), catalog())
    dw.execute(insert(items).values(row(int(sys.argv[2]), 1)))
    print(dw.phases.current().name, dw.phases.source)
    dw.close()
    """
)


def test_a_new_process_after_the_restart_writes_postgres_first(
    settings: Settings, private_redis: PrivateRedis, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    s = settings.with_(redis_url=private_redis.url)
    with prepared_writer(s, catalog(), phase="dual_write") as dw:
        _flip_to(dw, "postgres_primary")
        private_redis.stop()
        private_redis.start()
        script = tmp_path / "child.py"
        script.write_text(CHILD.format(root=str(ROOT)))
        before = _outbox(dw, "sqlite")
        proc = subprocess.run(
            [sys.executable, str(script), json.dumps({k: getattr(s, k) for k in KEYS}), "50"],
            capture_output=True, text=True, timeout=60, cwd=ROOT,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split() == ["postgres_primary", "record"]
        assert _outbox(dw, "sqlite") == before and len(_outbox(dw, "postgres")) == 1


def test_a_stale_redis_copy_is_overruled_at_the_first_fence(settings: Settings) -> None:
    """Redis holds an older epoch (a restored snapshot): a new instance that believes it is the old primary
    meets the retired side's fence, asks the record, and writes Postgres at once (no 15 s wait)."""
    with prepared_writer(settings, catalog(), phase="dual_write") as dw:
        _flip_to(dw, "postgres_primary")
        epoch = dw.phases.epoch
        dw.backends.redis.mset({dw.phases.key: "shadow", dw.phases.epoch_key: epoch - 2})
        fresh = DualWriter(settings, catalog())
        try:
            assert fresh.phases.current().name == "shadow"  # it believes the stale copy...
            t0 = time.monotonic()
            fresh.execute(insert(items).values(row(7, 7)))  # ...until the fence
            assert time.monotonic() - t0 < 2 and fresh.phases.current().name == "postgres_primary"
        finally:
            fresh.close()
        assert len(_outbox(dw, "postgres")) == 1
        assert dw.backends.redis.get(dw.phases.key) == b"postgres_primary"  # the copy repaired
