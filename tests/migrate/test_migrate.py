"""`dualwrite migrate` on the real servers, with SQLite files the tests build themselves."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal

from tests.migrate.support import column_types, fetch, make_db, migrate, rejects

SCHEMA = """
CREATE TABLE child (id INTEGER PRIMARY KEY, "Parent Id" INTEGER REFERENCES "Parent Table"("Id"), note TEXT);
CREATE TABLE "Parent Table" (
    "Id" INTEGER PRIMARY KEY AUTOINCREMENT,
    "select" TEXT UNIQUE,
    "MixedCase" NUMERIC(7,2),
    "order" VARCHAR(10),
    nv NVARCHAR(5),
    flag BOOLEAN,
    at DATETIME,
    ts TIMESTAMP,
    day DATE,
    data JSON,
    pic BLOB,
    anything,
    ratio REAL,
    small SMALLINT
);
CREATE TABLE pairs (tenant TEXT, n INTEGER, label TEXT, PRIMARY KEY (tenant, n)) WITHOUT ROWID;
CREATE TABLE logs (msg TEXT, level INT);
CREATE INDEX "Logs By Level" ON logs (level);
CREATE VIEW plain_view AS SELECT msg FROM logs WHERE level > 1;
CREATE VIEW lite_view AS SELECT datetime('now') AS now, [msg] FROM logs;
"""


def base_rows() -> dict:
    return {
        "Parent Table": [
            (
                1,
                "a",
                12.5,
                "x",
                "abcde",
                1,
                "2024-01-02 03:04:05",
                1700000000,
                "2024-02-29",
                '{"k": [1, 2]}',
                b"\x00\xff\x10",
                42,
                0.25,
                7,
            ),
            (
                5,
                "b",
                3,
                "y",
                "é",
                0,
                "2024-01-02T03:04:05.123+02:00",
                "2024-03-01 00:00:00",
                0,
                "[]",
                None,
                "txt",
                1e-3,
                -3,
            ),
            (9, None, None, None, None, None, None, None, None, None, None, None, None, None),
        ],
        "child": [(1, 1, "one"), (2, 5, "two"), (3, None, "none")],
        "pairs": [("a", 2, "x"), ("a", 1, "y"), ("B", 1, "z"), ("a b", 3, "w")],
        "logs": [(f"m{i}", i % 3) for i in range(10)],
    }


def test_types_identifiers_constraints(tmp_path, pg_schema) -> None:  # type: ignore[no-untyped-def]
    db = make_db(tmp_path / "app.db", SCHEMA, base_rows())
    result, rep = migrate(db, pg_schema)
    assert result.exit_code == 0, result.output
    assert rep["verified"] and rep["status"] == "done"
    summary = {t["table"]: t for t in rep["tables"]}
    assert summary["Parent Table"]["read"] == summary["Parent Table"]["written"] == 3
    assert summary["logs"]["written"] == 10 and summary["pairs"]["written"] == 4
    types = column_types(pg_schema, "Parent Table")
    assert types == {
        "Id": "bigint",
        "select": "text",
        "MixedCase": "numeric(7,2)",
        "order": "varchar(10)",
        "nv": "varchar(5)",
        "flag": "boolean",
        "at": "timestamp with time zone",
        "ts": "timestamp with time zone",
        "day": "date",
        "data": "jsonb",
        "pic": "bytea",
        "anything": "text",
        "ratio": "double precision",
        "small": "smallint",
    }
    assert column_types(pg_schema, "logs") == {"_dw_rowid": "bigint", "msg": "text", "level": "bigint"}
    row = fetch(pg_schema, 'SELECT * FROM "Parent Table" WHERE "Id" = 1')[0]
    assert row[2] == Decimal("12.50") and row[5] is True
    assert row[6] == datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert row[7] == datetime.fromtimestamp(1700000000, UTC)
    assert row[8] == date(2024, 2, 29) and row[9] == {"k": [1, 2]} and bytes(row[10]) == b"\x00\xff\x10"
    assert row[11] == "42"
    row5 = fetch(pg_schema, 'SELECT at, day, anything, flag FROM "Parent Table" WHERE "Id" = 5')[0]
    assert row5 == (datetime(2024, 1, 2, 1, 4, 5, 123000, tzinfo=UTC), date(1970, 1, 1), "txt", False)
    # rowid-only table: _dw_rowid holds SQLite's rowid
    assert fetch(pg_schema, "SELECT _dw_rowid, msg FROM logs ORDER BY 1 LIMIT 2") == [(1, "m0"), (2, "m1")]
    assert fetch(pg_schema, 'SELECT tenant, n FROM pairs ORDER BY tenant COLLATE "C", n') == [
        ("B", 1),
        ("a", 1),
        ("a", 2),
        ("a b", 3),
    ]
    # constraints after the data: unique, index (mixed case + space), FK (child created before its parent)
    idx = {r[0] for r in fetch(pg_schema, "SELECT indexname FROM pg_indexes WHERE schemaname = :s", s=pg_schema)}
    assert {"Logs By Level", "Parent Table_select_key"} <= idx
    fks = fetch(
        pg_schema,
        "SELECT conname, convalidated FROM pg_constraint WHERE contype = 'f'"
        " AND connamespace = CAST(:s AS regnamespace)",
        s=pg_schema,
    )
    assert fks == [("child_Parent Id_fkey", True)]
    views = {v["name"]: v["created"] for v in rep["views"]}
    assert views == {"plain_view": True, "lite_view": False}
    assert fetch(pg_schema, "SELECT count(*) FROM plain_view") == [(3,)]


def test_sequences_continue_after_max(tmp_path, pg_schema) -> None:  # type: ignore[no-untyped-def]
    db = make_db(tmp_path / "app.db", SCHEMA, base_rows())
    import sqlite3

    con = sqlite3.connect(db)  # AUTOINCREMENT never reuses: the sequence went to 20 (rows deleted since)
    con.execute("UPDATE sqlite_sequence SET seq = 20 WHERE name = 'Parent Table'")
    con.commit()
    con.close()
    result, _ = migrate(db, pg_schema)
    assert result.exit_code == 0, result.output
    assert fetch(pg_schema, "INSERT INTO child (note) VALUES ('new') RETURNING id") == [(4,)]
    assert fetch(pg_schema, 'INSERT INTO "Parent Table" ("select") VALUES (\'new\') RETURNING "Id"') == [(21,)]
    assert fetch(pg_schema, "INSERT INTO logs (msg) VALUES ('new') RETURNING _dw_rowid") == [(11,)]


def test_dirty_values_rejected_with_reason(tmp_path, pg_schema) -> None:  # type: ignore[no-untyped-def]
    db = make_db(
        tmp_path / "app.db",
        """
        CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, qty INTEGER, price NUMERIC(5,2), small SMALLINT,
                        doc JSON, at DATETIME);
        INSERT INTO t VALUES (1, 'ok', 1, 1.5, 1, '{}', '2024-01-01');
        INSERT INTO t VALUES (2, CAST(x'66ff6f' AS TEXT), 1, 1, 1, NULL, NULL);
        INSERT INTO t VALUES (3, 'a' || char(0) || 'b', 1, 1, 1, NULL, NULL);
        INSERT INTO t VALUES (4, 'ok', 'many', 1, 1, NULL, NULL);
        INSERT INTO t VALUES (5, 'ok', 1, 123456, 1, NULL, NULL);
        INSERT INTO t VALUES (6, 'ok', 1, 1, 70000, NULL, NULL);
        INSERT INTO t VALUES (7, 'ok', 1, 1, 1, '{"a": ', NULL);
        INSERT INTO t VALUES (8, 'ok', 1, 1, 1, NULL, 'yesterday');
        INSERT INTO t VALUES (9, 'ok', 1, 'cheap', 1, NULL, NULL);
        INSERT INTO t VALUES (10, 'fine', 2, 2.25, 2, '[1]', 1700000000);
        """,
    )
    result, rep = migrate(db, pg_schema)
    assert result.exit_code == 1, result.output  # verified, but rows were rejected
    (summary,) = rep["tables"]
    assert (summary["read"], summary["written"], summary["rejected"], summary["verified"]) == (10, 2, 8, True)
    got = {r["key"]: (r["column"], r["reason"]) for r in rejects(db, pg_schema)}
    # the expected rejects: a data table, shaped like test_verification.py's PLANTED
    assert got == {
        "[2]": ("name", "invalid UTF-8"),
        "[3]": ("name", "NUL byte in text"),
        "[4]": ("qty", "text in bigint column"),
        "[5]": ("price", "123456 out of range for numeric(5,2)"),
        "[6]": ("small", "70000 out of range for smallint"),
        "[7]": ("doc", "invalid JSON (Expecting value at 6)"),
        "[8]": ("at", "'yesterday' is not a timestamp"),
        "[9]": ("price", "text in numeric column"),
    }
    assert all({"table", "key", "column", "value", "reason"} <= set(r) for r in rejects(db, pg_schema))
    assert fetch(pg_schema, "SELECT id, name FROM t ORDER BY id") == [(1, "ok"), (10, "fine")]


def test_on_error_stop(tmp_path, pg_schema) -> None:  # type: ignore[no-untyped-def]
    db = make_db(
        tmp_path / "app.db", "CREATE TABLE t (id INTEGER PRIMARY KEY, q INTEGER);INSERT INTO t VALUES (1, 1), (2, 'x');"
    )
    result, _ = migrate(db, pg_schema, "--on-error", "stop")
    assert result.exit_code == 2
    assert "t key [2] column q: text in bigint column" in result.output


def test_cast_override(tmp_path, pg_schema) -> None:  # type: ignore[no-untyped-def]
    db = make_db(
        tmp_path / "app.db",
        "CREATE TABLE t (id INTEGER PRIMARY KEY, doc JSON, n TEXT);INSERT INTO t VALUES (1, 'not json', '5');",
    )
    result, rep = migrate(db, pg_schema, "--cast", "t.doc=text", "--cast", "t.n=integer")
    assert result.exit_code == 0, result.output
    assert column_types(pg_schema, "t") == {"id": "bigint", "doc": "text", "n": "integer"}
    assert fetch(pg_schema, "SELECT doc, n FROM t") == [("not json", 5)]


LONG = "a_column_name_that_is_much_longer_than_postgres_allows_for_names_"  # 65 bytes


def test_long_colliding_names_reported_before_load(tmp_path, pg_schema) -> None:  # type: ignore[no-untyped-def]
    assert len(LONG) > 63
    db = make_db(
        tmp_path / "app.db",
        f'CREATE TABLE t (id INTEGER PRIMARY KEY, "{LONG}1" TEXT, "{LONG}2" TEXT);'
        "INSERT INTO t VALUES (1, 'x', 'y');",
    )
    result, _ = migrate(db, pg_schema)
    assert result.exit_code == 2
    assert "63-byte limit" in result.output and f"--rename 't.{LONG}2=<shorter name>'" in result.output
    assert fetch(pg_schema, "SELECT count(*) FROM pg_tables WHERE schemaname = :s", s=pg_schema) == [(0,)]
    # the dry run says the same without touching anything
    dry, _ = migrate(db, pg_schema, "--dry-run")
    assert dry.exit_code == 2 and "63-byte limit" in dry.output
    result, rep = migrate(db, pg_schema, "--rename", f"t.{LONG}2=second")
    assert result.exit_code == 0, result.output
    assert set(column_types(pg_schema, "t")) == {"id", LONG[:63], "second"}
    assert fetch(pg_schema, "SELECT second FROM t") == [("y",)]


def test_dry_run_changes_nothing(tmp_path, pg_schema) -> None:  # type: ignore[no-untyped-def]
    db = make_db(tmp_path / "app.db", SCHEMA, base_rows())
    result, _ = migrate(db, pg_schema, "--dry-run")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output[result.output.index("{") :])
    assert [t["name"] for t in plan["tables"]] == ["child", "Parent Table", "pairs", "logs"]
    assert fetch(pg_schema, "SELECT count(*) FROM pg_tables WHERE schemaname = :s", s=pg_schema) == [(0,)]


def test_existing_tables_refused_without_resume(tmp_path, pg_schema) -> None:  # type: ignore[no-untyped-def]
    db = make_db(tmp_path / "app.db", SCHEMA, base_rows())
    assert migrate(db, pg_schema, "--keep-state")[0].exit_code == 0
    again, _ = migrate(db, pg_schema)
    assert again.exit_code == 2 and "--resume" in again.output
    resumed, rep = migrate(db, pg_schema, "--resume")  # everything done (its state kept): verifies again
    assert resumed.exit_code == 0 and rep["verified"], resumed.output


def test_orphan_foreign_key_added_not_valid(tmp_path, pg_schema) -> None:  # type: ignore[no-untyped-def]
    db = make_db(
        tmp_path / "app.db",
        "CREATE TABLE p (id INTEGER PRIMARY KEY); CREATE TABLE c (id INTEGER PRIMARY KEY, p_id INTEGER REFERENCES p);"
        "INSERT INTO p VALUES (1); INSERT INTO c VALUES (1, 1), (2, 99);",
    )
    result, rep = migrate(db, pg_schema)
    assert result.exit_code == 0, result.output
    assert "added NOT VALID" in result.output
    assert rep["foreign_keys"][0]["not_valid"] is True


# each case its own SQLite file and checks, shaped like the one above (make_db, migrate are the shared part)
def test_long_colliding_table_names_and_table_rename(tmp_path, pg_schema) -> None:  # type: ignore[no-untyped-def]
    db = make_db(
        tmp_path / "app.db",
        f'CREATE TABLE "{LONG}x" (id INTEGER PRIMARY KEY); CREATE TABLE "{LONG}y" (id INTEGER PRIMARY KEY);'
        f'INSERT INTO "{LONG}x" VALUES (1); INSERT INTO "{LONG}y" VALUES (2);',
    )
    result, _ = migrate(db, pg_schema)
    assert result.exit_code == 2 and f"--rename '{LONG}y=<shorter name>'" in result.output
    result, rep = migrate(db, pg_schema, "--rename", f"{LONG}y=Short Y")
    assert result.exit_code == 0, result.output
    assert fetch(pg_schema, 'SELECT id FROM "Short Y"') == [(2,)]
    assert fetch(pg_schema, f'SELECT id FROM "{LONG[:63]}"') == [(1,)]


def test_untyped_and_blob_values(tmp_path, pg_schema) -> None:  # type: ignore[no-untyped-def]
    db = make_db(
        tmp_path / "app.db",
        "CREATE TABLE t (id INTEGER PRIMARY KEY, any_value, b BLOB);"
        "INSERT INTO t VALUES (1, 12, 'text as blob'), (2, 1.5, x''), (3, x'68c3a9', NULL), (4, x'ff', NULL);",
    )
    result, rep = migrate(db, pg_schema)
    assert result.exit_code == 1, result.output  # verified, but rows were rejected
    rows = fetch(pg_schema, "SELECT id, any_value, b FROM t ORDER BY id")
    assert [(i, v, None if b is None else bytes(b)) for i, v, b in rows] == [
        (1, "12", b"text as blob"),
        (2, "1.5", b""),
        (3, "hé", None),
    ]
    assert [(r["key"], r["column"]) for r in rejects(db, pg_schema)] == [("[4]", "any_value")]


def test_row_refused_by_postgres_is_bisected_into_rejects(tmp_path, pg_schema, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from dualwrite import casts, convert

    monkeypatch.setattr(convert, "check_text", lambda v: v)  # let a NUL byte reach Postgres
    monkeypatch.setattr(casts, "_text_fast", lambda v: v)
    db = make_db(
        tmp_path / "app.db",
        "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT);"
        "INSERT INTO t VALUES (1, 'a'), (2, 'b' || char(0)), (3, 'c');",
    )
    result, rep = migrate(db, pg_schema)
    assert result.exit_code == 1, result.output  # verified, but rows were rejected
    assert (rep["tables"][0]["written"], rep["tables"][0]["rejected"], rep["verified"]) == (2, 1, True)
    (rej,) = rejects(db, pg_schema)
    assert rej["key"] == "[2]" and rej["column"] == "name" and rej["reason"]


def test_tampered_target_is_not_verified(tmp_path, pg_schema) -> None:  # type: ignore[no-untyped-def]
    db = make_db(tmp_path / "app.db", SCHEMA, base_rows())
    assert migrate(db, pg_schema, "--keep-state")[0].exit_code == 0  # kept: --resume verifies again below
    fetch(pg_schema, "UPDATE pairs SET label = 'changed' WHERE n = 3 RETURNING n")
    result, rep = migrate(db, pg_schema, "--resume")
    assert result.exit_code == 1 and "NOT verified" in result.output
    bad = {t["table"]: t.get("why_not_verified") for t in rep["tables"] if not t["verified"]}
    assert bad == {"pairs": "row hashes differ"}


def test_null_in_composite_primary_key_rejected_by_postgres(tmp_path, pg_schema) -> None:  # type: ignore[no-untyped-def]
    db = make_db(
        tmp_path / "app.db",
        "CREATE TABLE t (a TEXT, b INTEGER, v TEXT, PRIMARY KEY (a, b));"  # SQLite allows NULL here
        "INSERT INTO t VALUES (NULL, 1, 'n'), ('x', 2, 'ok');",
    )
    result, rep = migrate(db, pg_schema)
    assert result.exit_code == 1, result.output  # verified, but rows were rejected
    (rej,) = rejects(db, pg_schema)
    assert rej["column"] == "a" and "not-null" in rej["reason"]
    assert fetch(pg_schema, "SELECT a, b FROM t") == [("x", 2)]
