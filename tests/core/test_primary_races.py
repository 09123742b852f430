"""Postgres as the primary runs in read committed: a statement that needs its rows read first (a key change,
a cascade) must not reach rows committed between that read and the statement itself."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event, insert, update

from dualwrite.adapter import DualWriter
from dualwrite.settings import Settings
from dualwrite.testing import prepared_writer
from tests.core.support import both_sides, catalog, items, row


@pytest.fixture
def writers(settings: Settings) -> Iterator[tuple[DualWriter, DualWriter]]:
    first = prepared_writer(settings, catalog(), phase="postgres_primary")
    other = DualWriter(settings, catalog())
    yield first, other
    first.close()
    other.close()


def test_key_change_does_not_reach_a_row_committed_after_its_read(writers: tuple[DualWriter, DualWriter]) -> None:
    rekeyer, inserter = writers
    inserted, go = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def insert_104() -> None:
        try:
            with inserter.begin() as tx:
                tx.execute(insert(items).values(row(104, 1)))
                inserted.set()
                assert go.wait(10)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def before_update(_conn: Any, _cursor: Any, statement: str, *_a: Any) -> None:
        if statement.startswith("UPDATE items"):  # the rekey's own statement, after its read of id 104
            go.set()
            thread.join(10)  # the insert (and its event) is committed now

    thread = threading.Thread(target=insert_104)
    thread.start()
    assert inserted.wait(10)  # 104 exists, uncommitted: the rekey's read does not see it
    event.listen(rekeyer.backends.postgres, "before_cursor_execute", before_update)
    try:
        moved = rekeyer.execute(update(items).where(items.c.id == 104).values(id=200))
    finally:
        event.remove(rekeyer.backends.postgres, "before_cursor_execute", before_update)
    assert not errors, errors
    assert moved == []  # it read no row, so it changes none (it could have run before the insert)
    primary, secondary = both_sides(rekeyer)
    assert [r[0] for r in primary["items"]] == [104]
    assert secondary == primary
