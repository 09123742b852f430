"""Migrate's verification catches a planted difference on a real file (a changed value in a cast column, a
missing row, an extra row, a rejected row that turns up on Postgres) and does not flag the rows it rejected.

Each case migrates with --keep-state, plants the difference in Postgres, then `--resume` (which copies
nothing more) verifies again; the reject file of the first run stays the record of what was rejected.
"""

from __future__ import annotations

import pytest

from tests.migrate.support import fetch, make_db, migrate, rejects

# every test both ways (tests/migrate/conftest.py)
pytestmark = pytest.mark.usefixtures("source_side_where")

FILE = """
CREATE TABLE t (id INTEGER PRIMARY KEY, price NUMERIC(7,2), at DATETIME, doc JSON, name TEXT);
INSERT INTO t VALUES (1, 1.5, '2024-01-02 03:04:05', '{"b": 1, "a": [1, 2]}', 'one');
INSERT INTO t VALUES (2, 'cheap', '2024-01-02', NULL, 'rejected: text in numeric');
INSERT INTO t VALUES (3, 3, 1700000000, '[]', 'three');
INSERT INTO t VALUES (4, NULL, NULL, NULL, NULL);
INSERT INTO t VALUES (5, 12345.67, '2024-02-29T23:59:59.5+02:00', '"s"', 'five');
"""

PLANTED = {
    "changed value in a cast column": ("UPDATE t SET at = at + interval '1 second' WHERE id = 5", "row hashes differ"),
    "changed text": ("UPDATE t SET name = 'ONE' WHERE id = 1", "row hashes differ"),
    "value set where NULL": ("UPDATE t SET price = 0 WHERE id = 4", "row hashes differ"),
    "missing row": ("DELETE FROM t WHERE id = 3", "read 5 != written 3 + rejected 1"),
    "extra row": ("INSERT INTO t (id, name) VALUES (99, 'extra')", "read 5 != written 5 + rejected 1"),
    "rejected row resurrected": ("INSERT INTO t (id, name) VALUES (2, 'back')", "read 5 != written 5 + rejected 1"),
}


def first_run(tmp_path, pg_schema) -> str:  # type: ignore[no-untyped-def]
    db = make_db(tmp_path / "app.db", FILE)
    result, rep = migrate(db, pg_schema, "--keep-state")
    assert result.exit_code == 1, result.output  # verified, but a row was rejected
    (summary,) = rep["tables"]
    assert (summary["read"], summary["written"], summary["rejected"], summary["verified"]) == (5, 4, 1, True)
    assert [r["key"] for r in rejects(db, pg_schema)] == ["[2]"]
    return db


def test_untouched_target_with_a_rejected_row_verifies_again(tmp_path, pg_schema) -> None:  # type: ignore[no-untyped-def]
    db = first_run(tmp_path, pg_schema)
    result, rep = migrate(db, pg_schema, "--resume")
    assert rep["tables"][0]["verified"] and rep["tables"][0]["rejected"] == 1, result.output
    assert "NOT verified" not in result.output


@pytest.mark.parametrize("case", list(PLANTED))
def test_planted_difference_is_not_verified(tmp_path, pg_schema, case) -> None:  # type: ignore[no-untyped-def]
    db = first_run(tmp_path, pg_schema)
    sql, reason = PLANTED[case]
    fetch(pg_schema, sql + " RETURNING id")
    result, rep = migrate(db, pg_schema, "--resume")
    assert result.exit_code == 1 and "NOT verified" in result.output, result.output
    assert not rep["verified"]
    (summary,) = rep["tables"]
    assert (summary["verified"], summary["why_not_verified"]) == (False, reason)
