"""Commands an operator runs before `dualwrite init`, on the application's own SQLite file: each answers
in its own way (a refusal, a failed check, a report) but names init as the next step, with the tables
flag, and none of them creates anything of dualwrite's on either side."""

from __future__ import annotations

import json

from click.testing import CliRunner, Result
from sqlalchemy import create_engine, text

from dualwrite.cli.main import main
from dualwrite.engines import pg_engine
from dualwrite.settings import Settings
from tests.backfill.support import catalog
from tests.conftest import connection_args

META = ["--metadata", "tests.backfill.support:catalog"]
INIT = f"dualwrite init {' '.join(META)} --create-tables"


def app_only(settings: Settings) -> None:
    """The application's tables in its SQLite file, nothing of ours anywhere."""
    engine = create_engine(settings.sqlite_url)
    tables = catalog().tables()
    tables[0].metadata.create_all(engine, tables=tables)
    engine.dispose()


def run(settings: Settings, *args: str) -> Result:
    return CliRunner().invoke(main, [*args, *connection_args(settings)])


def state_tables(settings: Settings) -> list[str]:
    """dualwrite's tables (and the application's) on Postgres, in the test's schemas."""
    pg = pg_engine(settings, pool_size=1)
    with pg.connect() as conn:
        sql = "SELECT table_name FROM information_schema.tables WHERE table_schema = ANY(:s)"
        found = sorted(conn.execute(text(sql), {"s": [settings.pg_schema, settings.state_schema]}).scalars())
    pg.dispose()
    return found


def test_backfill_status_before_init_names_init_and_creates_no_checkpoint_tables(settings: Settings) -> None:
    app_only(settings)
    out = run(settings, "backfill", "status", *META)
    assert out.exit_code == 2, out.output
    assert out.output.strip().splitlines() == [out.output.strip()] and f"run `{INIT}` first" in out.output, out.output
    assert state_tables(settings) == []  # before: _dw_backfill_checkpoints, _versions, _leases half-created


def test_a_flip_refused_before_init_names_init_not_the_flip_again(settings: Settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    app_only(settings)
    report = tmp_path / "flip.json"
    out = run(settings, "cutover", "flip", *META, "--report", str(report))
    assert out.exit_code == 1 and "not moved: refusing sqlite -> dual_write: bookkeeping" in out.output, out.output
    after = out.output.split("\nnext:\n", 1)[1].splitlines()  # before: "next: `dualwrite cutover flip` to ..."
    assert [s.strip().split("  #")[0] for s in after] == [INIT, f"dualwrite cutover check {' '.join(META)}"], after
    doc = json.loads(report.read_text())
    assert doc["next_steps"][0].startswith(INIT) and not doc["moved"], doc
    assert state_tables(settings) == []


def test_doctor_before_init_names_init_with_the_tables_flag(settings: Settings) -> None:
    app_only(settings)
    out = run(settings, "doctor", *META)
    assert out.exit_code == 1 and "bookkeeping FAIL" in out.output, out.output
    after = out.output.split("\nnext:\n", 1)[1].splitlines()  # before: no next step, only "run `dualwrite init`"
    assert [s.strip().split("  #")[0] for s in after] == [INIT, f"dualwrite doctor {' '.join(META)}"], after
    assert state_tables(settings) == []


def test_verify_before_init_is_one_line_naming_init(settings: Settings) -> None:
    app_only(settings)
    out = run(settings, "verify", *META)
    # before: an UndefinedTable error per table, then `dualwrite doctor` as the next step
    assert out.exit_code == 2 and out.output.strip().count("\n") == 0, out.output
    assert "your table(s) bf_accounts, bf_tags, bf_notes do not exist" in out.output, out.output
    assert f"run `{INIT}` first" in out.output, out.output
    assert state_tables(settings) == []


def test_init_names_the_flip_to_dual_write_as_what_comes_next(settings: Settings) -> None:
    app_only(settings)
    out = run(settings, "init", *META, "--create-tables")
    assert out.exit_code == 0, out.output
    after = out.output.split("\nnext:\n", 1)[1].splitlines()  # before: no next step at all
    assert [s.strip().split("  #")[0] for s in after] == [f"dualwrite cutover flip {' '.join(META)}"], after
    assert "once every instance of your application writes through DualWriter" in after[0], after
