"""`verify --fix` touches only rows dualwrite wrote, says what it will change, asks on a terminal and needs
--yes otherwise: a row someone wrote straight into Postgres survives it."""

from __future__ import annotations

import re

from click.testing import CliRunner
from sqlalchemy import delete, insert, select, update

from dualwrite.cli.main import main
from dualwrite.stream.relay import Relay
from dualwrite.stream.replay import Replayer
from tests.conftest import connection_args
from tests.shadow.helpers import items, writer
from tests.terminal import run_on_terminal


def _names(dw) -> dict[int, str]:  # type: ignore[no-untyped-def]
    with dw.backends.postgres.connect() as conn:
        return {i: n for i, n in conn.execute(select(items.c.id, items.c.name))}


def test_fix_changes_only_rows_dualwrite_wrote_and_asks_first(settings) -> None:  # type: ignore[no-untyped-def]
    dw = writer(settings, phase="dual_write")
    try:
        for i in range(1, 21):  # captured and applied to Postgres: dualwrite's rows (each has a version)
            dw.execute(insert(items).values(id=i, name=f"n{i}", amount=1.0))
        assert Relay.for_backends(dw.backends).drain(timeout=30)
        Replayer(dw.backends, dw.tables, consumer="c", block_ms=10).run(once=True)
        with dw.backends.postgres.begin() as conn:
            conn.execute(insert(items).values(id=500, name="the user's own row", amount=0.0))  # never ours
            conn.execute(update(items).where(items.c.id == 3).values(name="drifted"))  # ours, now different
        with dw.backends.sqlite.begin() as conn:
            conn.execute(delete(items).where(items.c.id == 7))  # gone from SQLite, uncaptured: an extra of ours
        args = [
            "verify",
            *connection_args(settings),
            "--metadata",
            "tests.shadow.helpers:catalog",
            "--tables",
            "sh_items",
        ]

        out, code = run_on_terminal([*args, "--fix"], "n\n")
        assert "Re-apply rows from SQLite to Postgres and delete extra rows dualwrite wrote" in out, out
        assert "sh_items: 1 re-applied, 1 deleted" in out and code == 1 and "Aborted" in out, out
        assert _names(dw)[3] == "drifted" and 7 in _names(dw)  # declined: nothing changed

        res = CliRunner().invoke(main, [*args, "--fix"])
        assert res.exit_code == 2 and "without --yes" in res.output, res.output
        assert _names(dw)[3] == "drifted"

        out, code = run_on_terminal([*args, "--fix"], "y\n")
        assert code == 1, out  # differences were found (and fixed)
        assert "not fixed, dualwrite never wrote them (--fix-unowned): [500]" in out, out
        names = _names(dw)
        assert names[3] == "n3" and 7 not in names
        assert names[500] == "the user's own row"  # survives the fix
        res = CliRunner().invoke(main, args)
        row = re.search(r"^sh_items +DIFFERENT +\d+ +\d+ +0 +1 +0 ", res.output, re.M)  # missing, extra, differing
        assert res.exit_code == 1 and row and "sh_items  extra: [500]" in res.output, res.output  # never hidden
    finally:
        dw.close()
