from __future__ import annotations

import json
import time

from click.testing import CliRunner
from sqlalchemy import delete, func, insert, select, update

from dualwrite.bookkeeping import write_meta
from dualwrite.verify.verifier import load_last, verify_backends
from tests.conftest import connection_args
from tests.shadow.helpers import TABLES, item_rows, items, pair_rows, pairs, seed, writer

N = 100_000


def _plant(dw):
    with dw.backends.postgres.begin() as conn:
        conn.execute(update(items).where(items.c.id == 4242).values(name="changed"))
        conn.execute(delete(items).where(items.c.id == 77_777))
        conn.execute(insert(items).values(id=N + 5, name="extra", amount=1.0, note=None))
        conn.execute(update(pairs).where(pairs.c.tenant == "émile", pairs.c.n == 3).values(value="x"))
    with dw.backends.sqlite.begin() as conn:
        write_meta(conn, "last_seq", 10)  # as if changes had been captured since the copy


def test_verify_finds_exactly_the_planted_keys_and_fix_cleans(settings):
    dw = writer(settings)
    try:
        seed(dw, items, item_rows(N))
        seed(dw, pairs, pair_rows(2_000))
        start = time.perf_counter()
        clean = verify_backends(dw.backends, TABLES)
        assert clean.clean, clean.to_dict()
        _plant(dw)
        report = verify_backends(dw.backends, TABLES)
        elapsed = time.perf_counter() - start
        it, pa = report.tables
        assert it.missing == ["[77777]"]
        assert it.extra == [f"[{N + 5}]"]
        assert it.differing == ["[4242]"]
        assert it.sqlite_rows == N and it.postgres_rows == N
        assert it.queries < 200, it.queries  # far fewer than rows
        assert pa.differing == ['["émile",3]'] and not pa.missing and not pa.extra
        assert not report.clean
        last = load_last(dw.backends.redis, settings.namespace)
        assert last and last["clean"] is False and last["tables"]["sh_items"]["missing"] == 1
        # seed() wrote Postgres directly (no version entries): a fix touches only what dualwrite wrote, so
        # it inserts the missing row and leaves the others, listed as unowned
        safe = verify_backends(dw.backends, TABLES, fix=True)
        assert safe.tables[0].fixed == 1 and safe.tables[1].fixed == 0
        assert safe.tables[0].unowned == ["[4242]", f"[{N + 5}]"] and safe.tables[1].unowned == ['["émile",3]']
        with dw.backends.postgres.connect() as conn:
            assert conn.execute(select(items.c.name).where(items.c.id == 4242)).scalar() == "changed"
            assert conn.execute(select(func.count()).select_from(items).where(items.c.id == N + 5)).scalar() == 1
        fixed = verify_backends(dw.backends, TABLES, fix=True, fix_unowned=True)
        assert fixed.tables[0].fixed == 2 and fixed.tables[1].fixed == 1
        again = verify_backends(dw.backends, TABLES)
        assert again.clean, again.to_dict()
        assert load_last(dw.backends.redis, settings.namespace)["clean"] is True
        assert elapsed < 60
    finally:
        dw.close()


def test_verify_cli_exit_codes_and_report(settings, tmp_path):
    dw = writer(settings)
    try:
        seed(dw, items, item_rows(500))
        with dw.backends.postgres.begin() as conn:
            conn.execute(delete(items).where(items.c.id == 5))
        with dw.backends.sqlite.begin() as conn:
            write_meta(conn, "last_seq", 3)
    finally:
        dw.close()
    args = [*connection_args(settings), "--metadata", "tests.shadow.helpers:catalog"]
    from dualwrite.cli.main import main

    runner = CliRunner()
    res = runner.invoke(main, ["verify", *connection_args(settings)])
    assert res.exit_code == 2 and "--metadata" in res.output, res.output  # which tables? never a guess
    out = tmp_path / "r.json"
    res = runner.invoke(main, ["verify", *args, "--tables", "sh_items", "--report", str(out)])
    assert res.exit_code == 1, res.output
    assert json.loads(out.read_text())["tables"][0]["missing"] == ["[5]"]
    res = runner.invoke(main, ["verify", *args, "--tables", "sh_items", "--fix"])
    assert res.exit_code == 2, res.output  # not a terminal: a fix needs --yes, and says what it would touch
    assert "refusing to fix without --yes" in res.output and "it would re-apply rows from SQLite" in res.output
    assert "sh_items: 1 re-applied, 0 deleted" in res.output
    res = runner.invoke(main, ["verify", *args, "--tables", "sh_items"])
    assert res.exit_code == 1, res.output  # nothing was fixed
    res = runner.invoke(main, ["verify", *args, "--tables", "sh_items", "--fix", "--yes"])
    assert res.exit_code == 1, res.output  # differences were found (and fixed)
    res = runner.invoke(main, ["verify", *args, "--tables", "sh_items"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["verify", *args, "--tables", "nope"])
    assert res.exit_code == 2, res.output


def test_verify_many_segments_composite_keys_and_recheck(settings):
    import threading

    from dualwrite.verify.verifier import verify_tables

    dw = writer(settings)
    try:
        seed(dw, pairs, pair_rows(3_000))
        with dw.backends.postgres.begin() as conn:
            conn.execute(update(pairs).where(pairs.c.tenant == "Beta", pairs.c.n == 1).values(value="x"))
            conn.execute(delete(pairs).where(pairs.c.tenant == "zeta", pairs.c.n == 2_998))
            conn.execute(insert(pairs).values(tenant="aaa-first", n=0, value="extra"))
            conn.execute(insert(pairs).values(tenant="zzz-last", n=0, value="extra"))
        rep = verify_tables(
            [pairs], dw.backends.sqlite_read, dw.backends.postgres, segment_rows=100, leaf_rows=8
        ).tables[0]
        assert rep.differing == ['["Beta",1]']
        assert rep.missing == ['["zeta",2998]']
        assert sorted(rep.extra) == ['["aaa-first",0]', '["zzz-last",0]']
        assert rep.queries < 150, rep.queries

        # An in-flight change that reaches Postgres before the re-check is not reported.
        def heal():
            time.sleep(0.2)
            with dw.backends.postgres.begin() as conn:
                conn.execute(update(pairs).where(pairs.c.tenant == "Beta", pairs.c.n == 1).values(value="v1"))

        th = threading.Thread(target=heal)
        th.start()
        rep = verify_tables([pairs], dw.backends.sqlite_read, dw.backends.postgres, recheck_delay=0.6).tables[0]
        th.join()
        assert rep.differing == [] and rep.missing == ['["zeta",2998]']
    finally:
        dw.close()


def test_fix_leaves_keys_owned_by_a_newer_change_and_reports_them_stale(settings):
    from dualwrite.apply.rule import apply_snapshot_rows

    dw = writer(settings)
    try:
        seed(dw, items, item_rows(100))
        with dw.backends.sqlite.begin() as conn:
            write_meta(conn, "last_seq", 7)
        with dw.backends.postgres_apply.begin() as conn:  # Postgres already reflects seq 9 for key 5 (newer)
            apply_snapshot_rows(conn, items, [{"id": 5, "name": "newer", "amount": 1.0, "note": None}], 9)
        rep = verify_backends(dw.backends, [items], fix=True).tables[0]
        assert rep.differing == ["[5]"] and rep.fixed == 0 and rep.stale == 1
        assert load_last(dw.backends.redis, settings.namespace)["clean"] is False
    finally:
        dw.close()
