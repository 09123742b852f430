"""The event size limit is checked where the event is made (issue 14): a write whose event would exceed
MAX_EVENT_BYTES is refused on the primary with one clear line and nothing is committed, so no committed
change can be one that no replayer decodes; a row under the limit is carried and replays. Run with a
small limit (same code path); tests/faults/test_divergence.py writes a real 70 MB row."""

from __future__ import annotations

import pytest
from sqlalchemy import Column, Integer, LargeBinary, MetaData, String, Table, insert, select, update
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import dualwrite.events as events_mod
from dualwrite.bookkeeping import outbox
from dualwrite.errors import EventTooLargeError
from dualwrite.redis_keys import dead_letter_key
from dualwrite.settings import Settings
from dualwrite.stream.relay import Relay
from dualwrite.stream.replay import Replayer
from dualwrite.tables import Tables
from dualwrite.testing import prepared_writer

LIMIT = 64 * 1024
md = MetaData()
# this module's own tables: shaped like other suites' Table declarations; other names and types on purpose
blobs = Table(
    "size_blobs",
    md,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("label", String(40)),
    Column("data", LargeBinary),
)


class Base(DeclarativeBase):
    pass


class Doc(Base):
    __tablename__ = "size_docs"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    body: Mapped[str] = mapped_column(String)


def _state(dw, table: Table) -> tuple[list, list, list]:  # type: ignore[no-untyped-def]
    with dw.backends.sqlite_read.connect() as conn:
        lite = conn.execute(select(table).order_by(table.c.id)).all()
        out = conn.execute(select(outbox.c.seq, outbox.c.tbl)).all()
    with dw.backends.postgres.connect() as conn:
        pg = conn.execute(select(table).order_by(table.c.id)).all()
    return lite, pg, out


@pytest.mark.parametrize("phase", ["dual_write", "postgres_primary"])
def test_a_row_over_the_limit_is_refused_on_the_primary(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, phase: str
) -> None:
    monkeypatch.setattr(events_mod, "MAX_EVENT_BYTES", LIMIT)
    tables = Tables.of(md, store="size") + Tables.of(Base.metadata, store="size")
    with prepared_writer(settings, tables, phase=phase) as dw:
        small = bytes(range(256)) * 100  # 25.6 kB: base64 in JSON, ~34 kB, under the limit
        dw.execute(insert(blobs).values(id=1, label="small", data=small))
        before = _state(dw, blobs)
        assert before[0] == before[1] == [(1, "small", small)]
        big = bytes(range(256)) * 200  # 51.2 kB: ~68 kB of JSON, over
        with pytest.raises(EventTooLargeError) as info:
            dw.execute(insert(blobs).values(id=2, label="big", data=big))
        message = str(info.value)
        assert "table 'size_blobs' row (id=2): its change event is " in message
        assert "bytes (0.1 MiB), over the 65,536-byte limit (events.MAX_EVENT_BYTES)" in message
        assert "the write was refused and nothing committed" in message and "\n" not in message
        with pytest.raises(EventTooLargeError):  # an update that grows the row: the old row stays
            dw.execute(update(blobs).where(blobs.c.id == 1).values(data=big))
        with pytest.raises(EventTooLargeError), dw.session() as session:  # the ORM path: the same check
            session.add(Doc(id=1, body="x" * (LIMIT + 1)))
        assert _state(dw, blobs) == before
        with dw.backends.sqlite_read.connect() as conn:
            assert conn.execute(select(Doc.__table__)).all() == []

        # the row under the limit replays from the stream; nothing is ever dead-lettered
        with dw.backends.write_engine(dw.phases.current().secondary or "postgres").begin() as conn:
            conn.execute(blobs.delete())
            conn.exec_driver_sql("DELETE FROM _dw_versions")
        assert Relay.for_backends(dw.backends).drain(timeout=20)
        Replayer(dw.backends, dw.tables, consumer="size", block_ms=50).run(once=True)
        assert _state(dw, blobs)[:2] == before[:2]
        assert dw.backends.redis.exists(dead_letter_key(settings.namespace)) == 0
