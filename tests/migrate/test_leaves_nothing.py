"""After `dualwrite migrate` of any SQLite file, the target schema holds the source's tables and nothing else
of ours; the migration's own tables live in the state schema and are gone after success, unless kept
(--keep-state) or not ours (a live setup's bookkeeping already in the state schema stays)."""

from __future__ import annotations

from tests.conftest import state_schema_for
from tests.migrate.support import drop_schema, fetch, make_db, migrate

# A dualwrite application's file (its bookkeeping in it), a table without a primary key, mixed-case names.
SCRIPT = """
CREATE TABLE "Customer" (id INTEGER PRIMARY KEY AUTOINCREMENT, "Name" TEXT, joined DATETIME);
CREATE TABLE notes (body TEXT, at DATETIME);
CREATE TABLE pairs (a INTEGER, b TEXT, PRIMARY KEY (a, b));
CREATE TABLE _dw_outbox (seq INTEGER PRIMARY KEY, id TEXT, tbl TEXT, op TEXT, payload TEXT, created_at TEXT);
CREATE TABLE _dw_meta (name TEXT PRIMARY KEY, value INTEGER);
CREATE VIEW customer_names AS SELECT "Name" FROM "Customer";
"""
ROWS = {
    "Customer": [(1, "Zoë", "2024-01-01 10:00:00"), (2, "漢", None)],
    "notes": [("n1", "2024-01-02T00:00:00Z"), ("n2", None)],
    "pairs": [(1, "x"), (1, "y")],
    "_dw_outbox": [(1, "e1", "Customer", "upsert", "{}", "2024-01-01")],
    "_dw_meta": [("last_seq", 1)],
}
SOURCE_TABLES = {"Customer", "notes", "pairs"}
SCHEMA_EXISTS = "SELECT 1 FROM pg_namespace WHERE nspname = :s"


def _relations(schema: str) -> dict[str, str]:
    """Every relation in the schema: name -> kind (r table, v view, S sequence, i index)."""
    sql = "SELECT relname, relkind FROM pg_class WHERE relnamespace = to_regnamespace(:q)"
    return dict(fetch(schema, sql, q='"' + schema + '"'))


def _ours(schema: str) -> set[str]:
    return {name for name in _relations(schema) if name.startswith("_dw_") and name != "_dw_rowid"}


def test_a_successful_migration_leaves_only_the_source_tables(tmp_path, pg_schema) -> None:  # type: ignore[no-untyped-def]
    db = make_db(tmp_path / "app.db", SCRIPT, ROWS)
    result, report = migrate(db, pg_schema)
    assert result.exit_code == 0, result.output
    assert not (tmp_path / f"rejects-{pg_schema}").exists()  # nothing rejected: no reject folder made
    tables = {n for n, kind in _relations(pg_schema).items() if kind == "r"}
    assert tables == SOURCE_TABLES
    assert {n for n, kind in _relations(pg_schema).items() if kind == "v"} == {"customer_names"}
    assert _ours(pg_schema) == set()  # no bookkeeping, no checkpoints: only what the source had
    state = state_schema_for(pg_schema)
    assert fetch(pg_schema, SCHEMA_EXISTS, s=state) == []  # created for the migration, dropped after it
    assert report["state"].startswith("dropped") and "migration state: dropped" in result.output
    # Its state gone, a finished migration has nothing to resume: refused, never copied a second time.
    again, _ = migrate(db, pg_schema, "--resume")
    assert again.exit_code == 2 and "nothing to resume" in again.output, again.output


def test_kept_state_stays_and_a_live_setups_state_is_never_dropped(tmp_path, pg_schema) -> None:  # type: ignore[no-untyped-def]
    from dualwrite.bookkeeping import create_bookkeeping
    from dualwrite.engines import postgres_engine
    from tests.conftest import PG_ADMIN_URL

    state = state_schema_for(pg_schema)
    db = make_db(tmp_path / "app.db", SCRIPT, ROWS)
    kept, report = migrate(db, pg_schema, "--keep-state")
    assert kept.exit_code == 0, kept.output
    assert _ours(pg_schema) == set() and "_dw_backfill_checkpoints" in _relations(state)
    assert "--keep-state" in report["state"]

    # A live dualwrite setup's bookkeeping (what `dualwrite init` makes) is in another state schema: a
    # migration into another schema uses it, creates only the copy's tables, and drops exactly those.
    live, other = f"{pg_schema}_live", f"{pg_schema}_other"
    engine = postgres_engine(PG_ADMIN_URL, pg_schema, state_schema=live)
    try:
        with engine.begin() as conn:
            create_bookkeeping(conn, primary=True)
            conn.exec_driver_sql("UPDATE _dw_meta SET value = 41 WHERE name = 'last_seq'")
        result, report = migrate(db, other, "--state-schema", live)
        assert result.exit_code == 0, result.output
        assert _ours(other) == set()
        left = {n for n, kind in _relations(live).items() if kind == "r"}
        assert left == {"_dw_outbox", "_dw_versions", "_dw_meta", "_dw_ranges"}, left  # the live setup's own
        assert fetch(live, "SELECT name, value FROM _dw_meta ORDER BY name") == [("is_primary", 1), ("last_seq", 41)]
        assert "_dw_backfill_checkpoints" in report["state"] and "schema" not in report["state"]
    finally:
        engine.dispose()
        for name in (live, other):
            drop_schema(name)
