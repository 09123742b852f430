"""`dualwrite migrate` of a project file's sources: several SQLite files with overlapping table names into
one database in priority order; a collision in a shared schema refused before anything is written,
naming both files; --dry-run writes nothing; --undo leaves the target as it found it."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from click.testing import CliRunner
from sqlalchemy import create_engine, text

from dualwrite.cli.main import main
from tests.conftest import PG_ADMIN_URL
from tests.sources.conftest import ProjectFactory, schema_snapshot

SCRIPT = """
CREATE TABLE items (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, at DATETIME);
CREATE TABLE tags (item_id INTEGER REFERENCES items(id), tag TEXT, PRIMARY KEY (item_id, tag));
CREATE VIEW named AS SELECT name FROM items;
"""


def _store(path: Path, rows: int, extra: str = "") -> None:
    con = sqlite3.connect(path)
    con.executescript(SCRIPT + extra)
    con.executemany(
        "INSERT INTO items (name, at) VALUES (?, ?)", [(f"{path.stem}-{i}", "2024-01-01") for i in range(rows)]
    )
    con.executemany("INSERT INTO tags VALUES (?, ?)", [(i + 1, "t") for i in range(rows)])
    con.commit()
    con.close()


def cli(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(main, ["migrate", *args], catch_exceptions=False)


def test_many_files_in_priority_order_then_undo_leaves_the_target_as_found(
    project: ProjectFactory, tmp_path: Path, pg_schema: str
) -> None:
    sizes = {"alpha": 30, "beta": 20, "gamma": 10}
    for name, rows in sizes.items():
        _store(tmp_path / f"{name}.db", rows)
    config = str(project({"gamma": "P2", "alpha": "P0", "beta": "P1"}, models=None))
    # a schema of someone else's next to ours, with a table of its own: never touched
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{pg_schema}_beta"; CREATE TABLE "{pg_schema}_beta".keep (x int)'))
    admin.dispose()
    before = schema_snapshot(pg_schema)
    report = tmp_path / "plan.json"

    dry = cli("--config", config, "--dry-run", "--report", str(report))
    assert dry.exit_code == 0, dry.output
    assert (
        dry.output.splitlines()[0] == "dualwrite: all 3 source(s) in priority order: alpha (P0), beta (P1), gamma (P2)"
    )
    assert [s["source"] for s in json.loads(report.read_text())["sources"]] == ["alpha", "beta", "gamma"]
    assert schema_snapshot(pg_schema) == before  # nothing written

    real = cli("--config", config, "--report", str(report), "--rejects", str(tmp_path / "rejects"))
    assert real.exit_code == 0, real.output
    steps = [line.split(":")[0] for line in real.output.splitlines() if line.startswith("[")]
    assert steps == ["[1/3] source alpha (P0)", "[2/3] source beta (P1)", "[3/3] source gamma (P2)"], real.output
    doc = json.loads(report.read_text())
    assert doc["verified"] and [s["source"] for s in doc["sources"]] == ["alpha", "beta", "gamma"]
    for entry in doc["sources"]:
        items = next(t for t in entry["outcome"]["tables"] if t["table"] == "items")
        assert items["written"] == sizes[entry["source"]] and items["verified"]
    assert "migrate: every table of every source verified" in real.output
    engine = create_engine(PG_ADMIN_URL)
    with engine.connect() as conn:  # the same table names, each file's rows in its own schema
        for name, rows in sizes.items():
            got = conn.execute(text(f'SELECT count(*), min(name) FROM "{pg_schema}_{name}".items')).one()
            assert tuple(got) == (rows, f"{name}-0")
    engine.dispose()

    undo = cli("--config", config, "--undo", "--priority", "P1")  # not a terminal: it says what, needs --yes
    assert undo.exit_code == 2 and "refusing to undo the migration without --yes" in undo.output, undo.output
    assert f"it would drop 2 table(s), 1 view(s) in schema {pg_schema}_beta" in undo.output, undo.output
    undo = cli("--config", config, "--undo", "--priority", "P1", "--yes")  # one source alone
    assert undo.exit_code == 0, undo.output
    assert "source beta (P1)" in undo.output and "dropped 2 table(s), 1 view(s)" in undo.output, undo.output
    assert f"{pg_schema}_beta" in schema_snapshot(pg_schema)  # not ours: it stays, with its own table
    assert schema_snapshot(pg_schema)[f"{pg_schema}_beta"] == before[f"{pg_schema}_beta"]
    assert schema_snapshot(pg_schema)[f"{pg_schema}_alpha"]  # the others are untouched
    undo = cli("--config", config, "--undo", "--yes")
    assert undo.exit_code == 0, undo.output
    assert schema_snapshot(pg_schema) == before  # as it was found


def test_a_collision_in_a_shared_schema_is_refused_before_anything_is_written(
    project: ProjectFactory, tmp_path: Path, pg_schema: str
) -> None:
    _store(tmp_path / "alpha.db", 3)
    _store(tmp_path / "beta.db", 3)
    config = str(project({"alpha": "P0", "beta": "P1"}, models=None, shared_schema=True))
    before = schema_snapshot(pg_schema)
    out = cli("--config", config)
    assert out.exit_code == 2, out.output
    (line,) = [x for x in out.output.splitlines() if x.startswith("error:")]
    assert "refused before writing anything" in line and out.output.count("\n") == 2, out.output
    assert f"schema {pg_schema} would get 'items' from both {tmp_path}/alpha.db and {tmp_path}/beta.db" in line
    assert schema_snapshot(pg_schema) == before
    # no collision: a file whose tables are named apart shares the schema fine
    (tmp_path / "beta.db").unlink()
    con = sqlite3.connect(tmp_path / "beta.db")
    con.executescript(
        "CREATE TABLE beta_notes (id INTEGER PRIMARY KEY, body TEXT); INSERT INTO beta_notes VALUES (1, 'x');"
    )
    con.close()
    out = cli("--config", config, "--rejects", str(tmp_path / "rejects"))
    assert out.exit_code == 0, out.output
    tables = {r[0] for r in schema_snapshot(pg_schema)[pg_schema] if r[1] == "r"}
    assert tables == {"items", "tags", "beta_notes"}
    assert cli("--config", config, "--undo", "--yes").exit_code == 0
    assert schema_snapshot(pg_schema) == before


def test_json_null_text_verifies(tmp_path: Path, pg_schema: str) -> None:
    """SQLAlchemy's JSON type stores Python None as the text 'null' (the example stores do): migrate loads it
    as jsonb null, which the driver reads back as None; verification must not call that a difference."""
    from tests.migrate.support import make_db, migrate

    db = make_db(
        tmp_path / "j.db",
        "CREATE TABLE d (id INTEGER PRIMARY KEY, j JSON);",
        {"d": [(1, "null"), (2, None), (3, '{"a": 1e-07}')]},
    )
    before = schema_snapshot(pg_schema)
    result, report = migrate(db, pg_schema)
    assert result.exit_code == 0 and report["verified"], result.output
    # --undo works on one file without a project file too: the schema was there before, it stays
    undone, _ = migrate(db, pg_schema, "--undo", "--yes")
    assert undone.exit_code == 0 and "dropped 1 table(s), 0 view(s)" in undone.output, undone.output
    assert schema_snapshot(pg_schema) == before
