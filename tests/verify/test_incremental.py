"""Incremental re-verify (issue 18, goal 6): after a clean verify only the keys the change log touched are
compared again; it falls back to a full verify, saying why, when the log cannot tell what changed."""

from __future__ import annotations

import json

from click.testing import CliRunner
from sqlalchemy import delete, insert, text, update

from dualwrite.bookkeeping import outbox
from dualwrite.cli.main import main
from dualwrite.cutover.gate import GateConfig, verify_clean
from dualwrite.verify.verifier import load_last, verify_backends
from tests.conftest import connection_args
from tests.shadow.helpers import TABLES, item_rows, items, pair_rows, pairs, seed, writer

METADATA = ["--metadata", "tests.shadow.helpers:catalog"]


def _pg(dw, sql: str) -> None:  # type: ignore[no-untyped-def]
    """A change straight on Postgres, behind dualwrite's back (no event)."""
    with dw.backends.postgres.begin() as conn:
        conn.execute(text(sql))


def _seeded(settings):  # type: ignore[no-untyped-def]
    dw = writer(settings, phase="dual_write")
    seed(dw, items, item_rows(500))
    seed(dw, pairs, pair_rows(40))
    return dw


def test_only_touched_keys_are_compared_and_a_difference_there_is_found(settings) -> None:  # type: ignore[no-untyped-def]
    dw = _seeded(settings)
    try:
        full = verify_backends(dw.backends, TABLES)
        assert full.clean and full.mode == "full" and full.watermark == 0
        for i in range(5):  # 1 % of the rows, through dualwrite (both sides)
            dw.execute(update(items).where(items.c.id == i).values(name=f"renamed-{i}"))
        dw.execute(insert(pairs).values(tenant="acme", n=1000, value="new"))
        dw.execute(delete(items).where(items.c.id == 9))
        _pg(dw, "UPDATE sh_items SET note = 'lost apply' WHERE id = 3")  # a touched key, differing
        _pg(dw, "UPDATE sh_items SET note = 'direct write' WHERE id = 400")  # untouched: not re-read
        inc = verify_backends(dw.backends, TABLES, incremental_from_last=True)
        assert inc.mode == "incremental" and inc.fallback is None, inc.to_dict()
        assert inc.touched == 7 and inc.base == full.at and inc.watermark == 7
        by = {t.table: t for t in inc.tables}
        assert by["sh_items"].differing == ["[3]"] and not by["sh_items"].missing and not by["sh_items"].extra
        assert by["sh_items"].columns == {"[3]": ["note"]}
        assert (by["sh_items"].sqlite_rows, by["sh_items"].postgres_rows) == (5, 5)  # 6 touched, 9 deleted
        assert by["sh_pairs"].clean and by["sh_pairs"].sqlite_rows == 1
        # one checksum query per side over the touched keys; only the set that differs has its rows fetched
        assert by["sh_items"].queries == 4 and by["sh_pairs"].queries == 2
        # the untouched direct write is only a full verify's to find
        again = verify_backends(dw.backends, TABLES)
        assert {t.table: t.differing for t in again.tables}["sh_items"] == ["[3]", "[400]"]
    finally:
        dw.close()


def test_touched_keys_are_summed_in_sets_and_only_a_differing_set_is_fetched(settings, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from dualwrite.verify import incremental

    monkeypatch.setattr(incremental, "KEYSET", 100)  # 500 touched keys: five sets
    dw = _seeded(settings)
    try:
        assert verify_backends(dw.backends, TABLES).clean
        dw.execute(update(items).values(name=items.c.name + "!"))  # every row, through dualwrite
        _pg(dw, "UPDATE sh_items SET note = 'lost apply' WHERE id = 250")
        _pg(dw, "DELETE FROM sh_items WHERE id = 499")
        dw.execute(update(pairs).values(value=pairs.c.value + "!"))  # a composite text + integer key
        _pg(dw, "UPDATE sh_pairs SET value = 'lost' WHERE tenant = 'émile' AND n = 7")
        inc = verify_backends(dw.backends, TABLES, incremental_from_last=True)
        rep = inc.tables[[t.name for t in TABLES].index("sh_items")]
        assert inc.mode == "incremental" and inc.touched == 540, inc.fallback
        assert {t.table: t.differing for t in inc.tables}["sh_pairs"] == ['["émile",7]']
        assert rep.differing == ["[250]"] and rep.missing == ["[499]"] and not rep.extra
        assert (rep.sqlite_rows, rep.postgres_rows) == (500, 499)
        assert rep.queries == 5 * 2 + 2  # five sums a side, then the two differing sets, one fetch
    finally:
        dw.close()


def test_a_clean_incremental_moves_the_watermark_and_the_gate_names_its_base(settings) -> None:  # type: ignore[no-untyped-def]
    dw = _seeded(settings)
    try:
        full = verify_backends(dw.backends, TABLES)
        dw.execute(update(items).where(items.c.id == 1).values(name="one"))
        first = verify_backends(dw.backends, TABLES, incremental_from_last=True)
        assert first.clean and first.touched == 1 and first.watermark == 1
        dw.execute(update(items).where(items.c.id == 2).values(name="two"))
        second = verify_backends(dw.backends, TABLES, incremental_from_last=True)
        assert second.clean and second.touched == 1 and second.base == full.at  # key 1 is not re-read
        last = load_last(dw.backends.redis, settings.namespace)
        assert last is not None and last["mode"] == "incremental" and last["watermark"] == 2
        cond = verify_clean(dw.backends, dw.tables, GateConfig())
        assert cond.ok and f"incremental: 1 key(s) changed since the full verify of {full.at}" in cond.detail
    finally:
        dw.close()


def test_a_write_committed_after_the_watermark_was_read_is_the_next_incremental_verifys(settings, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from dualwrite.verify import incremental

    dw = _seeded(settings)
    try:
        assert verify_backends(dw.backends, TABLES).clean
        dw.execute(update(items).where(items.c.id == 1).values(name="one"))
        dw.execute(update(items).where(items.c.id == 2).values(name="two"))
        _pg(dw, "UPDATE sh_items SET note = 'lost apply' WHERE id = 2")
        real, calls = incremental.high_water, []

        def stale_first(backends):  # type: ignore[no-untyped-def]
            calls.append(1)  # the verify read its watermark before key 2's write committed (during the verify)
            return real(backends) - (1 if len(calls) == 1 else 0)

        monkeypatch.setattr(incremental, "high_water", stale_first)
        during = verify_backends(dw.backends, TABLES, incremental_from_last=True)
        assert during.mode == "incremental" and during.touched == 1 and during.watermark == 1 and during.clean
        monkeypatch.undo()
        after = verify_backends(dw.backends, TABLES, incremental_from_last=True)
        assert after.mode == "incremental" and after.touched == 1 and after.watermark == 2
        assert {t.table: t.differing for t in after.tables}["sh_items"] == ["[2]"]
    finally:
        dw.close()


def test_falls_back_to_a_full_verify_and_says_why(settings) -> None:  # type: ignore[no-untyped-def]
    dw = _seeded(settings)
    try:
        none = verify_backends(dw.backends, TABLES, incremental_from_last=True)
        assert none.mode == "full" and none.fallback == "no verify on record" and none.clean
        subset = verify_backends(dw.backends, [items], incremental_from_last=True)
        assert subset.mode == "full" and subset.fallback == "the last clean verify covered other tables (sh_pairs)"
        verify_backends(dw.backends, TABLES)
        _pg(dw, "UPDATE sh_items SET note = 'x' WHERE id = 10")
        dirty = verify_backends(dw.backends, TABLES)
        assert not dirty.clean
        after_dirty = verify_backends(dw.backends, TABLES, incremental_from_last=True)
        assert after_dirty.fallback == "the last verify was not clean" and not after_dirty.clean
        _pg(dw, "UPDATE sh_items SET note = NULL WHERE id = 10")
        assert verify_backends(dw.backends, TABLES).clean
        for i in range(3):
            dw.execute(update(items).where(items.c.id == i).values(name=f"n{i}"))
        with dw.backends.sqlite.begin() as conn:  # the outbox pruned past the watermark
            conn.execute(delete(outbox).where(outbox.c.seq == 2))
        holes = verify_backends(dw.backends, TABLES, incremental_from_last=True)
        assert holes.mode == "full" and holes.clean
        assert holes.fallback == (
            "the change log since the last clean verify has holes (2 event(s) kept for 3 seq(s) handed out: "
            "the outbox was pruned past it)"
        )
    finally:
        dw.close()


def test_cli_incremental(settings) -> None:  # type: ignore[no-untyped-def]
    dw = _seeded(settings)
    try:
        runner = CliRunner()
        args = ["verify", *connection_args(settings), *METADATA, "--recheck-delay", "0"]
        first = runner.invoke(main, [*args, "--incremental"])
        assert first.exit_code == 0, first.output
        assert "full verify: no verify on record" in first.output
        dw.execute(update(items).where(items.c.id == 1).values(name="one"))
        _pg(dw, "UPDATE sh_items SET amount = 99 WHERE id = 1")
        res = runner.invoke(main, [*args, "--incremental", "--json"])
        assert res.exit_code == 1, res.output
        doc = json.loads(res.output)
        assert doc["mode"] == "incremental" and doc["touched"] == 1
        assert {t["table"]: t["differing"] for t in doc["tables"]}["sh_items"] == ["[1]"]
    finally:
        dw.close()


def test_event_key_reads_the_key_without_the_image() -> None:
    from datetime import UTC, datetime

    from dualwrite.events import ChangeEvent, event_key

    at = datetime(2026, 1, 2, 3, 4, 5, 600000, tzinfo=UTC)
    for key in ({"id": 7}, {"tenant": "émile", "at": at}, {"id": 2**70}):
        ev = ChangeEvent("t", "upsert", key, {"blob": b"\x00" * 10, **key}, seq=3)
        assert event_key(ev.to_json()) == ("t", key)
        assert type(event_key(ev.to_json())[1].get("id", 0)) is int
