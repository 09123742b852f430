"""Row-for-row comparison of a database with the expected state, on exact values.

Rows are read through the models' own Tables (so each column's type decodes them as the application
would) and compared strictly: Decimal by its text (12.30 is not 12.3), timestamps as instants to the
microsecond, JSON by its canonical text (1 is not 1.0), bytes and large values by content, every other
value by type and equality. The one interpretation: SQLite's DateTime(timezone=True) keeps the UTC wall
clock without an offset (what SQLAlchemy stores there), so a naive value read from SQLite is UTC.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import JSON, Engine, select

from tests.userapp.codec import Digest
from tests.userapp.state import Key, State

SHOWN = 40  # differences listed in an assertion message


def same(expected: Any, actual: Any, *, json_column: bool = False) -> bool:
    if isinstance(expected, Digest):
        return expected.matches(actual)
    if expected is None or actual is None:
        return expected is None and actual is None
    if json_column:
        return _canonical(expected) == _canonical(actual)
    if isinstance(actual, memoryview):
        actual = bytes(actual)
    if isinstance(expected, datetime):
        if not isinstance(actual, datetime):
            return False
        if actual.tzinfo is None:
            actual = actual.replace(tzinfo=UTC)
        return expected == actual
    if isinstance(expected, Decimal):
        return isinstance(actual, Decimal) and str(expected) == str(actual)
    return type(expected) is type(actual) and expected == actual


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def read_rows(engine: Engine, state: State) -> dict[str, dict[Key, dict[str, Any]]]:
    out: dict[str, dict[Key, dict[str, Any]]] = {}
    with engine.connect() as conn:
        for name, table in state.schema.tables.items():
            pk = state.schema.pk[name]
            out[name] = {tuple(r[c] for c in pk): dict(r) for r in conn.execute(select(table)).mappings()}
        conn.rollback()
    return out


def differences(state: State, engine: Engine, label: str = "") -> list[str]:
    """Every difference between `state` and the database: missing rows, extra rows, differing values."""
    found = read_rows(engine, state)
    where = f"{label}: " if label else ""
    out: list[str] = []
    for name, table in state.schema.tables.items():
        want, have = state.rows[name], found[name]
        json_cols = {c.name for c in table.columns if isinstance(c.type, JSON)}
        for key in sorted(set(want) - set(have), key=repr):
            out.append(f"{where}{name}{list(key)} missing")
        for key in sorted(set(have) - set(want), key=repr):
            out.append(f"{where}{name}{list(key)} extra: {shown(have[key])}")
        for key in sorted(set(want) & set(have), key=repr):
            for col, value in want[key].items():
                got = have[key].get(col)
                if not same(value, got, json_column=col in json_cols):
                    out.append(f"{where}{name}{list(key)}.{col}: expected {shown(value)}, found {shown(got)}")
    return out


def assert_agree(state: State, engines: dict[str, Engine]) -> None:
    """Raise AssertionError listing (the first SHOWN of) the differences of every database."""
    diffs = [d for label, engine in engines.items() for d in differences(state, engine, label)]
    if diffs:
        more = f"\n... and {len(diffs) - SHOWN} more" if len(diffs) > SHOWN else ""
        raise AssertionError(f"{len(diffs)} difference(s) from the writers' log:\n" + "\n".join(diffs[:SHOWN]) + more)


def shown(value: Any) -> str:
    """A value as a difference line shows it (repr, cut at 120 characters)."""
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def ledger_lookup(engine: Engine) -> Any:
    """resolve= for State.from_logs: whether writer's transaction n committed (its ledger row exists)."""
    from tests.userapp.models import Ledger

    def committed(writer: str, n: int) -> bool:
        with engine.connect() as conn:
            found = conn.execute(select(Ledger.n).where(Ledger.writer == writer, Ledger.n == n)).first()
            conn.rollback()
        return found is not None

    return committed
