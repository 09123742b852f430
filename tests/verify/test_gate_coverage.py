"""The gate's verify_clean holds only when every captured table's last verify was clean: a verify of some
tables (`--tables`, as the next steps suggest after a fix) updates theirs and keeps the others' results,
so it can neither hide another table's standing difference nor stand in for a table never verified."""

from __future__ import annotations

import threading

from sqlalchemy import text, update

from dualwrite.cutover.gate import GateConfig, verify_clean
from dualwrite.engines import open_redis
from dualwrite.verify.last import load_shadow_window, store_last, verify_verdict
from dualwrite.verify.report import TableReport, VerifyReport
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


def _report(table: str, at: str, *, clean: bool = True, watermark: int = 0) -> VerifyReport:
    return VerifyReport([TableReport(table, differing=[] if clean else ["[1]"])], at=at, watermark=watermark)


def test_concurrent_verifies_of_different_tables_keep_both_results(settings, rclient) -> None:  # type: ignore[no-untyped-def]
    """Two verify processes storing at the same moment (an operator's and the daemon's, say): each table's
    result survives; a read-then-write without WATCH loses one of them in such a race."""
    ns = settings.namespace
    rounds = 150

    def store(table: str) -> None:
        client = open_redis(settings.redis_url)
        for i in range(rounds):
            store_last(client, ns, _report(table, f"2026-01-01T00:00:{i // 10:02d}.{i:06d}+00:00"))
        client.close()

    threads = [threading.Thread(target=store, args=(t,)) for t in ("t_one", "t_two", "t_three")]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    last = load_last(rclient, ns)
    assert set(last["tables"]) == {"t_one", "t_two", "t_three"}, last["tables"].keys()
    assert all(e["at"].endswith(f".{rounds - 1:06d}+00:00") for e in last["tables"].values()), last["tables"]


def test_a_verify_that_began_earlier_and_stores_later_does_not_replace_a_newer_result(settings, rclient) -> None:  # type: ignore[no-untyped-def]
    ns = settings.namespace
    store_last(rclient, ns, _report("t", "2026-01-01T00:00:02+00:00", clean=False), shadow_counts={"match": 9})
    store_last(rclient, ns, _report("t", "2026-01-01T00:00:01+00:00"), shadow_counts={"match": 1})  # older
    last = load_last(rclient, ns)
    assert last["tables"]["t"]["at"] == "2026-01-01T00:00:02+00:00" and not last["clean"], last
    assert load_shadow_window(rclient, ns) is None  # the older clean run opened no window either


def test_status_and_the_gate_judge_by_the_oldest_result_of_the_tables_asked() -> None:
    last = {
        "at": "2026-01-01T00:00:09+00:00",
        "tables": {
            "a": {"clean": True, "at": "2026-01-01T00:00:01+00:00"},
            "b": {"clean": False, "at": "2026-01-01T00:00:09+00:00"},
        },
    }
    assert verify_verdict(last, ["a", "b"]) == ("2026-01-01T00:00:01+00:00", ["b"], [])
    assert verify_verdict(last, ["b", "c"]) == ("2026-01-01T00:00:09+00:00", ["b"], ["c"])
    assert verify_verdict(last, []) == ("2026-01-01T00:00:01+00:00", ["b"], [])  # no tables named: all it holds
