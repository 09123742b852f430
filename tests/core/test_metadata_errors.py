"""Every command that takes the application's tables says in one line, exit 2, what is wrong with them: a
module that does not import (missing, or failing while importing), an attribute that is missing or not a
MetaData, an unknown table, or none given at all. The same spec that works (--metadata) works everywhere."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from dualwrite.cli.main import main
from tests.conftest import connection_args

COMMANDS = [
    ["verify"],
    ["backfill", "run", "--no-replay"],
    ["backfill", "status"],
    ["backfill", "deadletters", "redrive"],
    ["cutover", "check"],
    ["cutover", "flip"],
    ["cutover", "rollback"],
    ["doctor"],
    ["init", "--create-tables"],
]
BAD = [
    ("no_such_module_xyz:Base", "cannot import 'no_such_module_xyz'"),
    ("broken_models:Base", "importing 'broken_models' failed: RuntimeError: the app's own bug"),
    ("plain_module:Nope", "module 'plain_module' has no attribute 'Nope'"),
    ("plain_module:NUMBER", "int is not a Tables, MetaData, declarative base or list of Tables"),
    ("plain_module:failing", "calling failing() failed: ValueError: no tables today"),
]


@pytest.fixture
def modules(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    (tmp_path / "broken_models.py").write_text('raise RuntimeError("the app\'s own bug\\nsecond line")\n')
    plain = "NUMBER = 42\n\n\ndef failing():\n    raise ValueError('no tables today')\n"
    (tmp_path / "plain_module.py").write_text(plain)
    monkeypatch.syspath_prepend(str(tmp_path))


def _one_line_exit_2(args: list[str], expected: str) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, (args, result.output)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], (args, result.output)
    assert "Traceback" not in result.output


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_bad_metadata_is_one_line_exit_2_on_every_command(settings, modules, command) -> None:  # type: ignore[no-untyped-def]
    settings.sqlite_path.touch()  # the application's file exists (a missing one is refused before the tables)
    for spec, expected in BAD:
        _one_line_exit_2([*command, *connection_args(settings), "--metadata", spec], expected)


def test_unknown_table_and_no_tables_at_all(settings) -> None:  # type: ignore[no-untyped-def]
    settings.sqlite_path.touch()
    app = ["--metadata", "tests.userapp.writer:tables"]
    _one_line_exit_2(["verify", *connection_args(settings), *app, "--tables", "customers,nope"], "'nope'")
    _one_line_exit_2(["backfill", "run", *connection_args(settings), *app, "--table", "nope"], "'nope'")
    _one_line_exit_2(["verify", *connection_args(settings)], "which tables? give --metadata")
    _one_line_exit_2(["cutover", "flip", *connection_args(settings)], "which tables? give --metadata")


def test_init_with_the_metadata_exported_creates_only_dualwrites_tables(settings) -> None:  # type: ignore[no-untyped-def]
    """DUALWRITE_METADATA exported for every command is no request for the application's tables; the flag
    without --create-tables is (a usage error); with --create-tables the exported spec is used."""
    env = {"DUALWRITE_METADATA": "tests.userapp.writer:tables"}
    plain = CliRunner(env=env).invoke(main, ["init", *connection_args(settings)])
    assert plain.exit_code == 0 and "customers" not in plain.output, plain.output
    _one_line_exit_2(
        ["init", *connection_args(settings), "--metadata", "tests.userapp.writer:tables"], "--create-tables"
    )
    full = CliRunner(env=env).invoke(main, ["init", *connection_args(settings), "--create-tables"])
    assert full.exit_code == 0 and "customers" in full.output, full.output
