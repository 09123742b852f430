"""The gate's verify_clean holds only when every captured table's last verify was clean: a verify of some
tables (`--tables`, as the next steps suggest after a fix) updates theirs and keeps the others' results,
so it can neither hide another table's standing difference nor stand in for a table never verified."""

from __future__ import annotations

from sqlalchemy import text, update

from dualwrite.cutover.gate import GateConfig, verify_clean
from dualwrite.verify.verifier import load_last, verify_backends
from tests.shadow.helpers import TABLES, item_rows, items, pair_rows, pairs, seed, writer


def _pg(dw, sql: str) -> None:  # type: ignore[no-untyped-def]
    with dw.backends.postgres.begin() as conn:  # behind dualwrite's back: no event, no version
        conn.execute(text(sql))


def test_a_verify_of_one_table_does_not_hide_another_tables_difference(settings) -> None:  # type: ignore[no-untyped-def]
    dw = writer(settings, phase="dual_write")
    try:
        seed(dw, items, item_rows(200))
        seed(dw, pairs, pair_rows(40))
        only_items = verify_backends(dw.backends, [items])
        assert only_items.clean
        never = verify_clean(dw.backends, dw.tables, GateConfig())
        assert not never.ok and "never verified: sh_pairs" in never.detail, never

        _pg(dw, "UPDATE sh_pairs SET value = 'drift' WHERE n = 3")
        _pg(dw, "UPDATE sh_items SET note = 'drift' WHERE id = 5")
        both = verify_backends(dw.backends, TABLES)
        assert {t.table for t in both.tables if not t.clean} == {"sh_items", "sh_pairs"}
        # the next steps' way: fix one table, re-verify that table; the other still differs
        verify_backends(dw.backends, [items], fix=True, fix_unowned=True)
        assert verify_backends(dw.backends, [items]).clean
        cond = verify_clean(dw.backends, dw.tables, GateConfig())
        assert not cond.ok and "differences in sh_pairs" in cond.detail, cond
        assert set(load_last(dw.backends.redis, settings.namespace)["tables"]) == {"sh_items", "sh_pairs"}

        _pg(dw, "UPDATE sh_pairs SET value = 'v3' WHERE n = 3")  # the other one repaired by hand
        assert verify_backends(dw.backends, [pairs]).clean
        assert verify_clean(dw.backends, dw.tables, GateConfig()).ok  # every table's last verify is clean
    finally:
        dw.close()


def test_an_incremental_after_a_partial_verify_re_reads_from_the_oldest_table_result(settings) -> None:  # type: ignore[no-untyped-def]
    dw = writer(settings, phase="dual_write")
    try:
        seed(dw, items, item_rows(200))
        seed(dw, pairs, pair_rows(40))
        full = verify_backends(dw.backends, TABLES)
        assert full.clean and full.watermark == 0
        dw.execute(update(pairs).where(pairs.c.n == 1).values(value="one"))  # seq 1: after the full verify
        _pg(dw, "UPDATE sh_pairs SET value = 'lost apply' WHERE n = 1")
        dw.execute(update(items).where(items.c.id == 2).values(name="two"))  # seq 2
        part = verify_backends(dw.backends, [items])
        assert part.clean and part.watermark == 2
        # sh_pairs was last verified at watermark 0: its key 1 (seq 1) must still be re-read
        inc = verify_backends(dw.backends, TABLES, incremental_from_last=True)
        assert inc.mode == "incremental" and inc.touched == 2, inc.to_dict()
        assert {t.table: t.differing for t in inc.tables} == {"sh_items": [], "sh_pairs": ['["Beta",1]']}
    finally:
        dw.close()
