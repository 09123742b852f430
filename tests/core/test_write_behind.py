"""Write-behind (Settings.write_behind): while reads come from the primary, a write commits on the primary
alone and the replayer applies the other side from the stream; where reads come from the other side
(postgres_reads) it is applied inline as usual; strict mode and write-behind exclude each other."""

from __future__ import annotations

import pytest
from sqlalchemy import delete, insert, update

from dualwrite.errors import ConfigError
from dualwrite.settings import Settings, load_settings
from dualwrite.stream.relay import Relay
from dualwrite.stream.replay import Replayer
from dualwrite.testing import prepared_writer
from tests.core.support import both_sides, catalog, items, row


@pytest.mark.parametrize("phase", ["dual_write", "shadow"])
def test_write_behind_leaves_the_other_side_to_the_replayer(settings: Settings, phase: str) -> None:
    with prepared_writer(settings.with_(write_behind=True), catalog(), phase=phase) as dw:
        for i in range(6):
            dw.execute(insert(items).values(row(i, i)))
        dw.execute(update(items).where(items.c.id < 3).values(name="changed"))
        dw.execute(delete(items).where(items.c.id == 5))
        lite, pg = both_sides(dw)
        assert len(lite["items"]) == 5 and pg["items"] == []  # nothing applied on the request path
        assert dw.read("toy", "count", lambda c: len(c.execute(items.select()).all())) == 5  # reads: the primary
        assert Relay.for_backends(dw.backends).drain(timeout=60)
        Replayer(dw.backends, dw.tables, consumer="wb", block_ms=50).run(once=True)
        lite, pg = both_sides(dw)
        assert lite == pg and len(pg["items"]) == 5


def test_write_behind_applies_inline_where_reads_come_from_the_other_side(settings: Settings) -> None:
    with prepared_writer(settings.with_(write_behind=True), catalog(), phase="postgres_reads") as dw:
        dw.execute(insert(items).values(row(1, 1)))
        lite, pg = both_sides(dw)
        assert lite == pg and len(pg["items"]) == 1  # read-your-writes from Postgres


def test_write_behind_and_strict_exclude_each_other() -> None:
    with pytest.raises(ConfigError, match="write-behind and strict"):
        load_settings(env={"DUALWRITE_WRITE_BEHIND": "1", "DUALWRITE_STRICT": "1"})
    assert load_settings(env={"DUALWRITE_WRITE_BEHIND": "yes"}).write_behind is True
