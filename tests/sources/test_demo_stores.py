"""`dualwrite demo --multi-source DIR`: the example application as one SQLite file per store and the project
file declaring them; the Track C commands then work on it (`migrate --priority P0 --dry-run`, a migration of
every store into one shared schema in priority order, `--undo`)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from dualwrite.cli.main import main
from dualwrite.demo.app import STORES
from tests.conftest import PG_ADMIN_URL, server_args
from tests.sources.conftest import schema_snapshot


def test_the_stores_as_separate_files_then_migrated_in_priority_order(
    tmp_path: Path, pg_schema: str, redis_prefix: str
) -> None:
    folder = tmp_path / "stores"
    args = server_args(pg_schema, redis_prefix)
    out = CliRunner().invoke(main, ["demo", "--multi-source", str(folder), "--rows", "400", *args])
    assert out.exit_code == 0, out.output
    assert sorted(p.stem for p in folder.glob("*.db")) == sorted(STORES)
    config = ["--config", str(folder / "dualwrite.toml")]
    before = schema_snapshot(pg_schema)

    # the Track C plan's own spelling of the URL flag works too
    track_c = ["--postgresql-url", PG_ADMIN_URL, "--dry-run", "--priority", "P0"]
    dry = CliRunner().invoke(main, ["migrate", *config, *track_c])
    assert dry.exit_code == 0, dry.output
    assert dry.output.startswith(
        "dualwrite: priority P0: 3 source(s) in priority order: memory (P0), profiles (P0), ingest (P0)"
    )
    assert schema_snapshot(pg_schema) == before

    report = tmp_path / "migrate.json"
    real = CliRunner().invoke(main, ["migrate", *config, "--report", str(report), "--rejects", str(tmp_path / "rej")])
    assert real.exit_code == 0, real.output
    doc = json.loads(report.read_text())
    assert [s["source"] for s in doc["sources"]] == sorted(STORES, key=lambda s: (STORES[s], list(STORES).index(s)))
    assert doc["verified"] and all(t["written"] > 0 for s in doc["sources"] for t in s["outcome"]["tables"])
    assert CliRunner().invoke(main, ["migrate", *config, "--undo", "--yes"]).exit_code == 0
    assert schema_snapshot(pg_schema) == before
