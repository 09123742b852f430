"""`dualwrite verify` on an application we did not write (tests.userapp): exit 0 when both sides hold the
same rows, exit 1 naming each planted difference (table, key, and for a changed row its columns), and
never a difference that is not there (JSON key order, the same instant in another offset)."""

from __future__ import annotations

import json
from datetime import timedelta, timezone
from decimal import Decimal
from pathlib import Path

from click.testing import CliRunner
from sqlalchemy import insert, select, text, update

from dualwrite.cli.main import main
from dualwrite.events import key_text
from dualwrite.testing import prepared_writer
from tests.conftest import connection_args
from tests.userapp.models import Category, Customer, Order, Product
from tests.userapp.state import State
from tests.userapp.writer import Stats, Writer, tables

METADATA = ["--metadata", "tests.userapp.writer:tables"]


def _verify(settings, report: Path) -> tuple[int, str, dict]:  # type: ignore[no-untyped-def]
    res = CliRunner().invoke(main, ["verify", *connection_args(settings), *METADATA, "--report", str(report)])
    return res.exit_code, res.output, json.loads(report.read_text())


def _found(doc: dict) -> dict[str, dict[str, object]]:
    """table -> what verify reported for it (only tables with something to report)."""
    out: dict[str, dict[str, object]] = {}
    for t in doc["tables"]:
        got = {k: t[k] for k in ("missing", "extra") if t[k]}
        if t["differing"]:
            got["differing"] = t["differing_columns"]
        if got:
            out[t["table"]] = got
    return out


def test_verify_names_each_planted_difference_and_nothing_else(settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with prepared_writer(settings, tables(), phase="dual_write") as dw:
        w = Writer(dw, "v1", 1, tmp_path / "v1.jsonl", Stats(None, "v1"), rate=0, population=12, documents=2.0)
        w.run(max_tx=90)
        w.close()
        assert w.stats.doc["errors"] == 0, w.stats.doc
        state: State = w.work.state
        code, out, doc = _verify(settings, tmp_path / "clean.json")
        assert code == 0 and doc["clean"], out

        customers, orders, products, categories = (m.__table__ for m in (Customer, Order, Product, Category))
        (c1,), (c2,), (c3,), (c4,) = sorted(state.rows["customers"])[:4]
        (sku,) = sorted(state.rows["products"])[0]
        oid, total = next((k[0], r["total"]) for k, r in state.rows["orders"].items() if r["total"] % Decimal("0.1"))
        prefs = state.rows["customers"][(c2,)]["prefs"] or {}
        moment = state.rows["customers"][(c3,)]["signed_up"]
        with dw.backends.postgres.begin() as conn:  # behind dualwrite's back
            conn.execute(update(customers).where(customers.c.id == c1).values(name="changed"))  # a value
            conn.execute(products.delete().where(products.c.sku == sku))  # a missing row
            conn.execute(insert(categories).values(id=999_999, writer="x", name="extra", parent_id=None))  # extra
            conn.execute(update(customers).where(customers.c.id == c2).values(prefs={**prefs, "theme": "planted"}))
            conn.execute(update(orders).where(orders.c.id == oid).values(total=total.quantize(Decimal("0.1"))))
            shifted = moment.replace(tzinfo=timezone(timedelta(hours=2)))  # the wall clock, another zone
            conn.execute(update(customers).where(customers.c.id == c3).values(signed_up=shifted))
            # Not differences: the same JSON with its keys in another order, the same instant elsewhere.
            c4_row = state.rows["customers"][(c4,)]
            reordered = json.dumps(dict(reversed(list((c4_row["prefs"] or {"k": 1}).items()))))
            conn.execute(text("UPDATE customers SET prefs = CAST(:p AS json) WHERE id = :i"), {"p": reordered, "i": c4})
            same = c4_row["signed_up"].astimezone(timezone(timedelta(hours=-7)))
            conn.execute(update(customers).where(customers.c.id == c4).values(signed_up=same))
        if c4_row["prefs"] is None:  # the reordered JSON above is then a real change: put it on SQLite too
            with dw.backends.sqlite.begin() as conn:
                conn.execute(text("UPDATE customers SET prefs = :p WHERE id = :i"), {"p": reordered, "i": c4})

        code, out, doc = _verify(settings, tmp_path / "planted.json")
        assert code == 1 and not doc["clean"], out
        assert _found(doc) == {
            "customers": {
                "differing": {key_text([c1]): ["name"], key_text([c2]): ["prefs"], key_text([c3]): ["signed_up"]}
            },
            "products": {"missing": [key_text([sku])]},
            "categories": {"extra": [key_text([999_999])]},
            "orders": {"differing": {key_text([oid]): ["total"]}},
        }, out
        for line in (f"differing: {key_text([c1])} (name)", f"missing: {key_text([sku])}", "extra: [999999]"):
            assert line in out, out
        with dw.backends.postgres.connect() as conn:  # the planted precision change is what Postgres holds
            assert conn.execute(select(orders.c.total).where(orders.c.id == oid)).scalar() != total


def test_verify_of_exact_decimals_sees_the_fifteenth_digit(settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Decimals are compared exactly (both sides read them through the same Numeric type), not as floats
    of 12 digits: a change in the 15th significant digit is a difference."""
    from sqlalchemy import Column, Integer, MetaData, Numeric, Table

    md = MetaData()
    ledger = Table("big_money", md, Column("id", Integer, primary_key=True), Column("v", Numeric(18, 4)))
    from dualwrite import Tables
    from dualwrite.verify.verifier import verify_tables

    with prepared_writer(settings, Tables.of(md), phase="dual_write") as dw:
        dw.execute(insert(ledger).values(id=1, v=Decimal("12345678901.2345")))
        assert verify_tables([ledger], dw.backends.sqlite_read, dw.backends.postgres).clean
        with dw.backends.postgres.begin() as conn:
            conn.execute(update(ledger).values(v=Decimal("12345678901.2346")))
        (rep,) = verify_tables([ledger], dw.backends.sqlite_read, dw.backends.postgres).tables
        assert rep.differing == ["[1]"] and rep.columns == {"[1]": ["v"]}


# A database as apps leave them: declared types SQLite does not enforce, values in several forms each.
MESSY = """
CREATE TABLE artists (ArtistId INTEGER PRIMARY KEY, Name NVARCHAR(120));
CREATE TABLE genres (Code TEXT PRIMARY KEY, Label TEXT);
CREATE TABLE invoices (
    InvoiceId INTEGER PRIMARY KEY, ArtistId INTEGER REFERENCES artists(ArtistId), InvoiceDate DATETIME,
    Total NUMERIC(10,2), Paid BOOLEAN, Meta JSON, Ref UUID, Scan BLOB, Rate REAL, Note, Due DATE
);
CREATE TABLE playlist_track (PlaylistId INTEGER, TrackId INTEGER, Position INT, PRIMARY KEY (PlaylistId, TrackId));
CREATE TABLE logs (msg TEXT, at DATETIME);
"""
MESSY_ROWS = {
    "artists": [(1, "AC/DC"), (2, "Zoë Keating"), (3, "日本")],
    "genres": [("rock", "Rock"), ("Jazz", "Jazz"), ("émo", "Emo")],
    "invoices": [
        (
            1,
            1,
            "2009-01-01 00:00:00",
            1.98,
            1,
            '{"b": 1, "a": [1, 2]}',
            "6F9619FF-8B86-D011-B42D-00C04FC964FF",
            b"\x00\x01",
            0.1,
            5,
            "2009-01-01",
        ),
        (
            2,
            2,
            "2009-01-02T10:11:12.123456Z",
            2.675,
            "yes",
            "5",
            "6f9619ff-8b86-d011-b42d-00c04fc964fe",
            "text in a blob",
            1.5,
            "five",
            1230768000,
        ),
        (3, 3, 1234567890, "3.5", "f", '[true, null, "x"]', None, None, None, None, "2009-01-03T00:00:00"),
        (4, 1, "2010-06-30 23:59:59.5+02:00", 0.01, 0, "{}", None, b"", -2.25, 7.5, None),
    ],
    "playlist_track": [(1, 10, 1), (1, 11, 2), (2, 10, 1)],
    "logs": [("started", "2024-01-01 00:00:00"), ("warn: é", 1700000000), ("stopped", None)],  # no key: rowid
}


def test_verify_reflects_a_migrate_loaded_database_as_migrate_cast_it(settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`verify --reflect` reads each SQLite column the way `dualwrite migrate` cast it (ISO text, 'Z',
    offsets and epoch seconds as one instant; 0/1/'yes'/'f' as booleans; 2.675 as numeric 2.68; JSON text;
    UUID text in any case; text in a BLOB as its bytes; a table without a key by its rowid, which migrate
    keeps in _dw_rowid), so a fresh migration verifies clean, and each difference planted on Postgres is
    named."""
    from tests.migrate.support import make_db, migrate

    path = make_db(tmp_path / "app.db", MESSY, MESSY_ROWS)
    result, report = migrate(path, settings.pg_schema, "--state-schema", settings.state_schema, tmp=tmp_path)
    assert result.exit_code == 0, result.output
    assert all(t["verified"] for t in report["tables"])
    assert path == str(settings.sqlite_path)  # the application's file, where the commands look
    args = ["verify", *connection_args(settings), "--reflect", "--segment-rows", "2"]  # several key ranges
    run = lambda name: CliRunner().invoke(main, [*args, "--report", str(tmp_path / name)])  # noqa: E731
    clean = run("clean.json")
    assert clean.exit_code == 0, clean.output

    from dualwrite.engines import pg_engine

    engine = pg_engine(settings)
    try:
        with engine.begin() as conn:
            conn.execute(text('UPDATE artists SET "Name" = \'Acdc\' WHERE "ArtistId" = 1'))  # a value
            conn.execute(text('DELETE FROM playlist_track WHERE "PlaylistId" = 2'))  # a missing row
            conn.execute(text("UPDATE logs SET msg = 'tampered' WHERE _dw_rowid = 2"))  # in a rowid table
            conn.execute(text("INSERT INTO genres VALUES ('pop', 'Pop')"))  # an extra row
            conn.execute(text('UPDATE invoices SET "Meta" = \'{"a": [1, 3], "b": 1}\' WHERE "InvoiceId" = 1'))
            conn.execute(text('UPDATE invoices SET "Total" = 2.6 WHERE "InvoiceId" = 2'))  # precision lost
            # the wall clock kept, the zone changed: an instant two hours earlier
            conn.execute(text("""UPDATE invoices SET "InvoiceDate" = '2009-01-01 00:00:00+02' WHERE "InvoiceId" = 1"""))
            # not a difference: the same JSON, keys in another order (jsonb keeps its own order anyway)
            conn.execute(text('UPDATE invoices SET "Meta" = \'[true, null, "x"]\' WHERE "InvoiceId" = 3'))
    finally:
        engine.dispose()
    planted = run("planted.json")
    assert planted.exit_code == 1, planted.output
    doc = json.loads((tmp_path / "planted.json").read_text())
    assert _found(doc) == {
        "artists": {"differing": {"[1]": ["Name"]}},
        "playlist_track": {"missing": ["[2,10]"]},
        "genres": {"extra": ['["pop"]']},
        "invoices": {"differing": {"[1]": ["InvoiceDate", "Meta"], "[2]": ["Total"]}},
        "logs": {"differing": {"[2]": ["msg"]}},
    }, planted.output
