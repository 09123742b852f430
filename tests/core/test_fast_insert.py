"""The plain-insert fast path (fast_insert.py) returns what Core returns, raises what Core raises, and
stands aside for every statement or connection it cannot vouch for."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, Connection, Integer, MetaData, String, Table, create_engine, event, func, insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError

from dualwrite import fast_insert
from dualwrite.bookkeeping import outbox
from dualwrite.capture import with_returning
from dualwrite.settings import Settings
from dualwrite.testing import prepared_writer
from tests.core.support import both_sides, catalog, items, md, row, snapshot

defaults = Table(
    "with_defaults",
    MetaData(),
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("kind", String(10), default="python-side"),
)
keyed = Table(
    "keyed",
    defaults.metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("db_name", String(10), key="attr"),  # a column whose key is not its name
    Column("serial", Integer, server_default="7"),
)


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[Connection]:
    engine = create_engine(f"sqlite:///{tmp_path / 'fast.db'}")
    md.create_all(engine)
    defaults.metadata.create_all(engine)
    with engine.connect() as c:
        c.begin()
        yield c
    engine.dispose()


def _fast(conn: Connection, stmt: Any, table: Table = items, params: Any = None) -> Any:
    return fast_insert.run(conn, stmt, table, params, with_returning)


def test_rows_are_core_rows_value_for_value(conn: Connection) -> None:
    for i in (1, 2):  # the first compiles the shape, the second reuses it
        fast = _fast(conn, insert(items).values(row(i, i)))
        core = conn.execute(with_returning(insert(items).values({**row(i, i), "id": i + 10}))).all()
        assert fast is not None and len(fast) == len(core) == 1
        got, want = fast[0], core[0]
        assert tuple(got)[1:] == tuple(want)[1:] and [type(v) for v in got] == [type(v) for v in want]
        assert got._mapping.keys() == want._mapping.keys()
        assert got._mapping[items.c.name] == got.name == want._mapping["name"]
    reordered = dict(reversed(list(row(3, 3).items())))  # another order of the same columns: another shape
    assert _fast(conn, insert(items).values(reordered))[0].id == 3
    by_params = _fast(conn, insert(items), params=row(4, 4))  # insert(table) with a parameter dict
    core = conn.execute(with_returning(insert(items)), {**row(4, 4), "id": 14}).all()
    assert tuple(by_params[0])[1:] == tuple(core[0])[1:] and [type(v) for v in by_params[0]] == [
        type(v) for v in core[0]
    ]
    named = {items.c[k].name: v for k, v in row(5, 5).items()}  # keys as a Table's names are typed (quoted_name)
    assert {type(k) for k in named} != {str}
    by_names = _fast(conn, insert(items), params=named)
    assert by_names is not None and tuple(by_names[0]) == tuple(
        conn.execute(items.select().where(items.c.id == 5)).one()
    )


def test_keyed_columns_and_server_defaults_come_back_as_from_core(conn: Connection) -> None:
    core = conn.execute(with_returning(insert(keyed).values(id=1, attr="x"))).all()[0]
    fast = _fast(conn, insert(keyed).values(id=2, attr="y"), keyed)[0]
    assert fast._mapping.keys() == core._mapping.keys() and tuple(fast) == (2, "y", 7)
    assert fast._mapping[keyed.c.attr] == fast._mapping["db_name"] == "y"
    assert _fast(conn, insert(keyed).values({keyed.c.id: 3}), keyed) is None  # Column objects as keys: Core


def test_driver_errors_are_raised_as_core_raises_them(conn: Connection) -> None:
    assert _fast(conn, insert(items).values(row(1, 1))) is not None
    with pytest.raises(IntegrityError):
        _fast(conn, insert(items).values(row(1, 2)))


@pytest.mark.parametrize(
    "make",
    [
        lambda: sqlite_insert(items).values(row(1, 1)).on_conflict_do_nothing(),  # another clause
        lambda: insert(items).values({**row(1, 1), "name": func.lower("X")}),  # a SQL expression
        lambda: insert(items).values(row(1, 1)).execution_options(foo=1),
        lambda: insert(items).values(row(1, 1)).prefix_with("OR IGNORE"),
        lambda: insert(items),  # no values (the caller passes parameters)
    ],
)
def test_statements_it_cannot_vouch_for_go_to_core(conn: Connection, make: Any) -> None:
    assert _fast(conn, make()) is None


@pytest.mark.parametrize(
    "params",
    [[row(1, 1), row(2, 2)], {**row(1, 1), "nope": 1}, {}],  # many rows; a column the table lacks; none
)
def test_parameters_it_cannot_vouch_for_go_to_core(conn: Connection, params: Any) -> None:
    assert _fast(conn, insert(items), params=params) is None
    assert _fast(conn, insert(items).values(row(3, 3)), params=params or {"id": 4}) is None  # values and params


def test_a_python_side_default_goes_to_core(conn: Connection) -> None:
    assert _fast(conn, insert(defaults).values(id=1), defaults) is None  # Core computes "kind" per execution
    assert _fast(conn, insert(defaults).values(id=2, kind="given"), defaults) is not None


def test_cursor_listeners_see_every_statement(conn: Connection) -> None:
    seen: list[str] = []
    event.listen(conn, "before_cursor_execute", lambda *a: seen.append(a[2]))
    assert _fast(conn, insert(items).values(row(1, 1))) is None


def test_the_adapter_takes_it_and_captures_the_same_events(settings: Settings, monkeypatch: Any) -> None:
    taken: list[Any] = []
    real = fast_insert.run

    def watched(*a: Any) -> Any:  # the real fast path, its answers kept
        taken.append(out := real(*a))
        return out

    monkeypatch.setattr(fast_insert, "run", watched)
    with prepared_writer(settings, catalog(), phase="dual_write") as dw:
        rows = dw.execute(insert(items).values(row(1, 1)))
        dw.execute(insert(items), row(3, 3))
        with dw.begin() as tx:
            tx.execute(insert(items).values(row(2, 2)))
            events = list(tx.events)
        lite, pg = both_sides(dw)  # dual_write: applied inline to Postgres from the same events
    assert len(taken) == 3 and all(t is not None for t in taken)
    assert rows[0]["name"] == row(1, 1)["name"]
    assert lite == pg and [r[0] for r in pg["items"]] == [1, 2, 3]
    (ev,) = events
    assert ev.op == "upsert" and ev.key == {"id": 2} and ev.image is not None and ev.image["at"] == row(2, 2)["at"]


def test_a_failing_fast_insert_rolls_the_write_back_and_frees_the_lock(settings: Settings) -> None:
    with prepared_writer(settings, catalog(), phase="dual_write") as dw:
        dw.execute(insert(items).values(row(1, 1)))
        before = (both_sides(dw), snapshot(dw.backends.sqlite_read, outbox))
        with pytest.raises(IntegrityError):
            dw.execute(insert(items).values(row(1, 2)))  # the same shape, a colliding key
        assert (both_sides(dw), snapshot(dw.backends.sqlite_read, outbox)) == before
        dw.execute(insert(items).values(row(2, 2)))  # the write lock was let go
        lite, pg = both_sides(dw)
        assert lite == pg and len(pg["items"]) == 2
