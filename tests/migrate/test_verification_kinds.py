"""Migrate's verification over every cast kind that needs a normal form (JSON key order, floats, NULLs,
blobs, timezone-aware timestamps) on a composite text key: an untouched target verifies, a value changed on
Postgres after the load does not, and a rejected row is no difference. Both ways the SQLite side runs
(here, and in the child process big files get)."""

from __future__ import annotations

import json

import pytest

from tests.migrate.support import fetch, make_db, migrate

# every test both ways (tests/migrate/conftest.py)
pytestmark = pytest.mark.usefixtures("source_side_where")

FILE = """
CREATE TABLE k (org TEXT, code TEXT, doc JSON, x REAL, blob BLOB, at TIMESTAMP, n INTEGER, u UUID,
                PRIMARY KEY (org, code));
INSERT INTO k VALUES ('a', 'z', '{"b": 1, "a": {"d": [1, 2], "c": null}}', 0.1, X'00ff10', '2024-03-01T10:00:00+05:30',
                      1, '12345678-1234-5678-1234-567812345678');
INSERT INTO k VALUES ('a', 'é', '[1, 2.5, "x"]', 1e300, X'', '2024-03-01 10:00:00.123456', NULL, NULL);
INSERT INTO k VALUES ('B', 'a', NULL, NULL, NULL, NULL, NULL, NULL);
INSERT INTO k VALUES ('b', 'a', '"just text"', -0.0, 'text in a blob', 1700000000, 3, NULL);
INSERT INTO k VALUES ('b', 'b', '{"nan": NaN}', 2.0, NULL, NULL, 4, NULL);
"""

PLANTED = {
    "json value": 'UPDATE k SET doc = \'{"b": 2, "a": {"d": [1, 2], "c": null}}\' WHERE code = \'z\'',
    "json key removed": 'UPDATE k SET doc = \'{"b": 1, "a": {"d": [1, 2]}}\' WHERE code = \'z\'',
    "float": "UPDATE k SET x = 0.10000000000000002 WHERE code = 'z'",
    "null to value": "UPDATE k SET n = 0 WHERE org = 'B'",
    "value to null": "UPDATE k SET x = NULL WHERE org = 'b' AND code = 'a'",
    "blob": "UPDATE k SET blob = '\\x00ff11' WHERE code = 'z'",
    "empty blob to null": "UPDATE k SET blob = NULL WHERE code = 'é'",
    "timestamp": "UPDATE k SET at = at + interval '1 microsecond' WHERE code = 'é'",
    "key": "UPDATE k SET code = 'c' WHERE org = 'b' AND code = 'a'",
}


def first_run(tmp_path, pg_schema) -> str:  # type: ignore[no-untyped-def]
    db = make_db(tmp_path / "kinds.db", FILE)
    result, rep = migrate(db, pg_schema, "--keep-state")
    (summary,) = rep["tables"]
    # ('b','b') is rejected (NaN is no JSON Postgres reads); it must not count as a difference
    assert (summary["read"], summary["written"], summary["rejected"], summary["verified"]) == (5, 4, 1, True), (
        result.output
    )
    return db


def test_untouched_target_verifies(tmp_path, pg_schema) -> None:  # type: ignore[no-untyped-def]
    db = first_run(tmp_path, pg_schema)
    assert fetch(pg_schema, "SELECT doc::text FROM k WHERE code = 'z'") == [
        ('{"a": {"c": null, "d": [1, 2]}, "b": 1}',)  # jsonb reordered the keys: still verified
    ]
    _result, rep = migrate(db, pg_schema, "--resume")
    assert rep["tables"][0]["verified"]


@pytest.mark.parametrize("case", list(PLANTED))
def test_changed_on_postgres_is_found(tmp_path, pg_schema, case) -> None:  # type: ignore[no-untyped-def]
    db = first_run(tmp_path, pg_schema)
    assert fetch(pg_schema, PLANTED[case] + " RETURNING 1") == [(1,)]
    result, rep = migrate(db, pg_schema, "--resume")
    assert not rep["verified"] and "NOT verified" in result.output, result.output
    assert rep["tables"][0]["why_not_verified"] == "row hashes differ"


def test_a_row_postgres_refused_is_no_difference(tmp_path, pg_schema) -> None:  # type: ignore[no-untyped-def]
    """A rejected key the casts accept (Postgres refused the row, e.g. a constraint): the child counted the row,
    so the table is hashed again without it. Planted: the row is gone from Postgres and named in the rejects."""
    db = first_run(tmp_path, pg_schema)
    assert fetch(pg_schema, "DELETE FROM k WHERE org = 'B' RETURNING 1") == [(1,)]
    path = tmp_path / f"rejects-{pg_schema}" / "rejects.jsonl"
    record = {"table": "k", "key": '["B","a"]', "column": None, "value": None, "reason": "planted", "row": {}}
    path.write_text(path.read_text() + json.dumps(record) + "\n")
    result, rep = migrate(db, pg_schema, "--resume")
    (summary,) = rep["tables"]
    assert (summary["read"], summary["written"], summary["rejected"], summary["verified"]) == (5, 3, 2, True), (
        result.output
    )
