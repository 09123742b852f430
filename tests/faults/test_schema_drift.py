"""Schema drift during dual write (issue 9): a column added on SQLite that the model lacks is reported,
and an event of the new shape that reaches a replayer with the old model is dead-lettered, never applied
without its column; after the documented path (column on Postgres, new model) the re-drive applies it."""

from __future__ import annotations

import time

from sqlalchemy import Column, MetaData, String, Table, insert, select, text

from dualwrite.adapter import DualWriter
from dualwrite.doctor import find_drift
from dualwrite.settings import Settings
from dualwrite.stream.deadletters import list_dead_letters, redrive
from dualwrite.stream.relay import Relay
from dualwrite.stream.replay import Replayer
from dualwrite.tables import Tables
from dualwrite.testing import prepared_writer
from tests.core.support import catalog, items, row
from tests.faults.conftest import Collector


def test_column_added_on_sqlite_during_dual_write(settings: Settings, collector: Collector) -> None:
    dw = prepared_writer(settings, catalog(), phase="dual_write")
    new_md = MetaData()
    items_v2 = Table(items.name, new_md, *[c._copy() for c in items.columns], Column("mood", String(20)))
    dw2: DualWriter | None = None
    try:
        dw.execute(insert(items).values(row(1, 1)))
        with dw.backends.sqlite.begin() as conn:  # the application's migration, before its model knows the column
            conn.execute(text("ALTER TABLE items ADD COLUMN mood VARCHAR(20)"))
        drift = [str(d) for d in find_drift(dw.backends.sqlite, [items], backend="sqlite")]
        assert drift == ["sqlite: table 'items' has column(s) mood the model lacks: not captured"], drift

        # the path: the column on Postgres, then the model that has it; inline applies go through
        with dw.backends.postgres.begin() as conn:
            conn.execute(text("ALTER TABLE items ADD COLUMN mood VARCHAR(20)"))
        dw2 = DualWriter(settings, Tables.of(items_v2))
        dw2.execute(insert(items_v2).values({**row(2, 2), "mood": "sunny"}))
        assert Relay.for_backends(dw2.backends).drain(timeout=20)
        # a replayer still on the old model meets the new shape: dead letter `schema`, nothing applied
        with dw.backends.postgres_apply.begin() as conn:
            # as if the inline apply had failed: neither the row nor its version reached Postgres
            conn.execute(text("DELETE FROM items WHERE id = 2"))
            conn.execute(text("DELETE FROM _dw_versions WHERE tbl = 'items' AND pk = '[2]'"))
        Replayer(dw.backends, dw.tables, consumer="old", block_ms=50).run(once=True)
        dead = list_dead_letters(dw.backends.redis, settings.namespace)
        assert [d["reason"] for d in dead] == ["schema"], dead
        assert "mood" in dead[0]["error"]
        with dw.backends.postgres.connect() as conn:
            assert conn.execute(select(items_v2.c.id).where(items_v2.c.id == 2)).all() == []
        # updated replayer: the re-drive applies it with its column
        t0 = time.monotonic()
        counts = redrive(dw2.backends, dw2.tables)
        assert counts.get("applied", 0) == 1 and not list_dead_letters(
            dw.backends.redis, settings.namespace
        ), counts
        with dw.backends.postgres.connect() as conn:
            assert conn.execute(select(items_v2.c.mood).where(items_v2.c.id == 2)).scalar() == "sunny"
        collector.bad_input["column added on SQLite during dual write (schema drift)"] = (
            "reported by `dualwrite doctor` (find_drift); an event of the new shape reaching a replayer with "
            "the old model is dead-lettered `schema` and re-driven after the model update "
            f"({time.monotonic() - t0:.2f} s)"
        )
    finally:
        if dw2 is not None:
            dw2.close()
        dw.close()
