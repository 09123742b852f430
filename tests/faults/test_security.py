"""A workload with a Postgres URL carrying a password: the password must appear in no log line, report
file, metric exposition, stream entry, dead letter, stored verify report or raised error message."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from prometheus_client import REGISTRY, generate_latest
from sqlalchemy import create_engine, delete, insert, text

from dualwrite.backfill.copier import Copier
from dualwrite.backfill.rejects import RejectWriter
from dualwrite.engines import check_postgres
from dualwrite.redis_keys import dead_letter_key, stream_key, verify_key
from dualwrite.settings import Settings
from dualwrite.stream.relay import Relay
from dualwrite.stream.replay import Replayer
from dualwrite.testing import prepared_writer
from dualwrite.verify.verifier import verify_backends
from tests.core.support import TABLES, catalog, items, row
from tests.faults.conftest import Collector, PrivatePostgres, heal_and_verify
from tests.faults.workload import Workload


def test_password_never_leaks(
    fsettings: Settings,
    pg: PrivatePostgres,
    collector: Collector,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
    uid: str,
) -> None:
    role, password = f"dw_pw_{uid}", f"S3cr3t-{uid}-pw"
    admin = create_engine(pg.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:  # the private cluster: trust auth ignores it, the URL still carries it
        conn.execute(text(f"CREATE ROLE {role} LOGIN SUPERUSER PASSWORD '{password}'"))
    admin.dispose()
    caplog.set_level(logging.DEBUG)
    s = fsettings.with_(postgres_url=f"postgresql://{role}:{password}@127.0.0.1:{pg.port}/postgres")
    errors: list[str] = []
    dw = prepared_writer(s, catalog(), phase="sqlite", relay=True)
    try:
        wl = Workload(dw, 5)
        wl.run(20)
        rows = [row(i, i) for i in range(500, 520)]
        rows[3]["name"] = "nul\x00"  # one reject
        dw.execute(insert(items).values(rows))
        rejects = tmp_path / "rejects.jsonl"
        Copier.for_backends(dw.backends, chunk_size=7, rejects=RejectWriter(rejects)).copy_tables(list(TABLES))
        dw.phases.set("dual_write", force=True)
        dw.execute(delete(items).where(items.c.id == 503))  # the NUL row: its later delete makes its upsert stale
        wl.run(10)
        pg.stop()  # failures with the URL in play: logged, counted
        wl.run(5)
        try:
            check_postgres(s)
        except Exception as exc:  # noqa: BLE001
            errors.append(f"{type(exc).__name__}: {exc}")
        try:
            Replayer(dw.backends, dw.tables, consumer="w", block_ms=50).step()
        except Exception as exc:  # noqa: BLE001
            errors.append(f"{type(exc).__name__}: {exc}")
        pg.start()
        # one poison entry, replayed before any relay round (the relay moves a foreign top entry aside)
        assert Relay.for_backends(dw.backends).drain(timeout=20)
        dw.stop_relay()
        top = dw.backends.redis.xrevrange(stream_key(s.namespace), count=1)[0][0].decode().split("-")[0]
        dw.backends.redis.xadd(stream_key(s.namespace), {"e": b"not json"}, id=f"{top}-1")
        Replayer(dw.backends, dw.tables, consumer="w", block_ms=50).run(once=True)
        verify_backends(dw.backends, list(TABLES), fix=True)  # stores a verify report in Redis
        # one dead letter: the foreign garbage entry (the NUL row's upsert is stale behind its delete)
        heal_and_verify(dw, TABLES, since=time.monotonic(), expected_dead=1)
        places = {
            "log records (caplog, every logger, DEBUG)": "\n".join(
                f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records
            ),
            "reject file": rejects.read_text(),
            "metric exposition (generate_latest)": generate_latest(REGISTRY).decode(),
            "stream entries": repr(dw.backends.redis.xrange(stream_key(s.namespace))),
            "dead-letter entries": repr(dw.backends.redis.xrange(dead_letter_key(s.namespace))),
            "stored verify report (Redis)": repr(dw.backends.redis.get(verify_key(s.namespace))),
            "raised error messages (Postgres down)": "\n".join(errors),
            "every Redis key and value of the namespace": repr(
                [(k, dw.backends.redis.dump(k)) for k in dw.backends.redis.scan_iter(match=f"{s.namespace}*")]
            ),
        }
        assert errors, "expected errors while Postgres was down"
        assert caplog.records, "expected log lines"
        leaks = [where for where, content in places.items() if password in content]
        for where, content in places.items():
            collector.security[where] = "LEAK" if password in content else f"no password ({len(content)} chars checked)"
        collector.security["Settings repr (see test_settings_repr_masks_password)"] = (
            "LEAK" if password in repr(s) else "no password"
        )
        assert not leaks, f"password found in: {leaks}"
    finally:
        dw.close()
        admin = create_engine(pg.url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f"DROP OWNED BY {role}"))
            conn.execute(text(f"DROP ROLE IF EXISTS {role}"))
        admin.dispose()


def test_settings_repr_masks_password(settings: Settings) -> None:
    s = settings.with_(
        postgres_url="postgresql://u:Sup3rSecret@127.0.0.1:1/x", redis_url="redis://:R3disSecret@127.0.0.1:1/0"
    )
    for shown in (repr(s), str(s), f"{s}", repr([s])):
        assert "Sup3rSecret" not in shown and "R3disSecret" not in shown, shown
        assert "127.0.0.1:1/x" in shown  # still useful: host and database stay visible
    assert "Sup3rSecret" in s.postgres_url  # the real value is untouched
