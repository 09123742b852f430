"""Checkpoints: an older table is migrated in place; saves keep started_at, a moving rate and the versions."""

from __future__ import annotations

import time

from sqlalchemy import select, text

from dualwrite.backfill import checkpoint as ckpt
from dualwrite.engines import postgres_engine


def test_old_table_is_migrated_and_progress_fields_kept(settings) -> None:  # type: ignore[no-untyped-def]
    pg = postgres_engine(settings.postgres_url, settings.pg_schema, pool_size=1)
    with pg.begin() as conn:  # the table as the first release created it, with one row
        conn.execute(
            text(
                "CREATE TABLE _dw_backfill_checkpoints (tbl text PRIMARY KEY, last_key text,"
                " rows_copied bigint NOT NULL, rows_rejected bigint NOT NULL, status text NOT NULL,"
                " updated_at timestamptz NOT NULL)"
            )
        )
        conn.execute(text("INSERT INTO _dw_backfill_checkpoints VALUES ('old', '[5]', 5, 0, 'copying', now())"))
    ckpt.ensure(pg)
    ckpt.ensure(pg)  # idempotent
    with pg.begin() as conn:
        old = ckpt.load(conn, "old")
        assert (old.last_key, old.rows_copied, old.started_at, old.rate) == ("[5]", 5, None, None)
        cp = ckpt.Checkpoint("t", status="copying", version=7)
        for rows in (100, 200):
            cp.rows_copied = rows
            ckpt.save(conn, cp)
            time.sleep(0.05)
        cp.version = 9
        ckpt.save(conn, cp)
    with pg.connect() as conn:
        got = ckpt.load(conn, "t")
        assert got.started_at is not None and got.started_at <= got.updated_at
        assert got.rate is not None and got.rate > 0  # 100 rows in ~0.05 s
        seqs = conn.execute(select(ckpt.chunk_versions.c.seq).where(ckpt.chunk_versions.c.tbl == "t")).scalars()
        assert sorted(seqs) == [7, 9]
    assert ckpt.reset(pg, ["t"]) == 1
    with pg.connect() as conn:
        assert conn.execute(select(ckpt.chunk_versions)).first() is None
    pg.dispose()
