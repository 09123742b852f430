"""Rows changed by the primary's referential actions (ON DELETE CASCADE / SET NULL, ON UPDATE CASCADE) get
their own events, so the other side and a replica rebuilt from the events agree; shapes that cannot be
captured are refused when the catalog is built."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import (
    Column,
    ForeignKey,
    ForeignKeyConstraint,
    Integer,
    MetaData,
    String,
    Table,
    delete,
    insert,
    update,
)
from sqlalchemy.orm import registry

from dualwrite.adapter import DualWriter
from dualwrite.bookkeeping import outbox
from dualwrite.errors import ConfigError, UnsupportedSchemaError
from dualwrite.events import ChangeEvent
from dualwrite.settings import Settings
from dualwrite.tables import Tables
from dualwrite.testing import prepared_writer
from tests.core.support import snapshot

md = MetaData()
# this module's own tables: shaped like other suites' Table declarations; other names and types on purpose
org = Table(
    "c_org",
    md,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("code", String(10), unique=True),
)
team = Table(
    "c_team",
    md,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("org_id", Integer, ForeignKey("c_org.id", ondelete="CASCADE")),
    Column("org_code", String(10), ForeignKey("c_org.code", onupdate="CASCADE")),
)
member = Table(  # a grandchild of org, with a composite key
    "c_member",
    md,
    Column("team_id", Integer, ForeignKey("c_team.id", ondelete="CASCADE"), primary_key=True),
    Column("name", String(20), primary_key=True),
)
note = Table(  # keeps its row, loses the reference
    "c_note",
    md,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("team_id", Integer, ForeignKey("c_team.id", ondelete="SET NULL")),
    Column("body", String(20)),
)
node = Table(  # a self-referencing tree
    "c_node",
    md,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("parent", Integer, ForeignKey("c_node.id", ondelete="CASCADE")),
)
TABLES = (org, team, member, note, node)


def cat() -> Tables:
    return Tables.of(TABLES, store="toy")


@pytest.fixture(params=["dual_write", "postgres_primary"])
def dw(settings: Settings, request: pytest.FixtureRequest) -> Iterator[DualWriter]:
    w = prepared_writer(settings, cat(), phase=request.param)
    yield w
    w.close()


def sides(dw: DualWriter) -> tuple[dict[str, Any], dict[str, Any]]:
    return (
        {t.name: snapshot(dw.backends.sqlite_read, t) for t in TABLES},
        {t.name: snapshot(dw.backends.postgres, t) for t in TABLES},
    )


def seed(dw: DualWriter) -> None:
    dw.execute(insert(org).values([{"id": 1, "code": "a"}, {"id": 2, "code": "b"}]))
    teams = [{"id": 10, "org_id": 1, "org_code": "a"}, {"id": 20, "org_id": 2, "org_code": None}]
    dw.execute(insert(team).values(teams))
    dw.execute(insert(member).values([{"team_id": 10, "name": "x"}, {"team_id": 10, "name": "y"}]))
    dw.execute(insert(member).values([{"team_id": 20, "name": "z"}]))
    dw.execute(insert(note).values([{"id": 1, "team_id": 10, "body": "n"}, {"id": 2, "team_id": 20, "body": "m"}]))
    dw.execute(insert(node).values([{"id": i, "parent": i - 1 if i > 1 else None} for i in range(1, 40)]))


def rebuilt_from_events(dw: DualWriter) -> dict[str, Any]:
    """Apply the primary's outbox, in reverse order, to a wiped secondary: the events alone must suffice."""
    primary = dw.phases.current().primary
    with dw.backends.read_engine(primary).connect() as conn:
        rows = conn.execute(outbox.select().order_by(outbox.c.seq)).all()
    events = [ChangeEvent.from_json(r.payload) for r in rows]
    secondary = "postgres" if primary == "sqlite" else "sqlite"
    engine = dw.backends.postgres_apply if secondary == "postgres" else dw.backends.sqlite_apply
    with engine.begin() as conn:
        for t in TABLES:
            conn.execute(t.delete())
        conn.exec_driver_sql("DELETE FROM _dw_versions")
    dw.apply(secondary, list(reversed(events)))
    return {t.name: snapshot(dw.backends.read_engine(secondary), t) for t in TABLES}


def test_cascades_and_set_null_reach_the_other_side(dw: DualWriter) -> None:
    seed(dw)
    dw.execute(delete(org).where(org.c.id == 1))  # team 10 -> members x, y cascade; note 1 loses team_id
    dw.execute(delete(node).where(node.c.id == 2))  # a 38-deep chain of cascades in one table
    primary, other = sides(dw)
    assert primary["c_team"] == [(20, 2, None)]
    assert primary["c_member"] == [(20, "z")]
    assert primary["c_note"] == [(1, None, "n"), (2, 20, "m")]
    assert primary["c_node"] == [(1, None)]
    assert other == primary
    assert rebuilt_from_events(dw) == primary


def test_on_update_cascade_and_transactions(dw: DualWriter) -> None:
    seed(dw)
    with dw.begin() as tx:
        tx.execute(update(org).where(org.c.id == 1).values(code="a2"))  # team 10 follows
        tx.execute(delete(team).where(team.c.id == 20))  # members cascade, note 2 set null
    primary, other = sides(dw)
    assert primary["c_team"] == [(10, 1, "a2")]
    assert primary["c_member"] == [(10, "x"), (10, "y")]
    assert primary["c_note"] == [(1, 10, "n"), (2, None, "m")]
    assert other == primary
    assert rebuilt_from_events(dw) == primary


def test_only_changed_rows_get_events(dw: DualWriter) -> None:
    seed(dw)
    primary = dw.phases.current().primary
    with dw.backends.read_engine(primary).connect() as conn:
        before = conn.execute(outbox.select()).all()
    dw.execute(update(org).where(org.c.id == 2).values(code="b"))  # same value: nothing cascades
    dw.execute(delete(org).where(org.c.id == 99))  # nothing matches
    with dw.backends.read_engine(primary).connect() as conn:
        after = conn.execute(outbox.select().order_by(outbox.c.seq)).all()
    assert [(r.tbl, r.op) for r in after[len(before) :]] == [("c_org", "upsert")]


class Node:
    pass


class Org:
    pass


_orm = registry(metadata=md)
_orm.map_imperatively(Node, node)
_orm.map_imperatively(Org, org)


# the same checks as the Core test above, after the ORM's unit of work instead
def test_orm_deletes_and_key_updates_cascade_are_captured(dw: DualWriter) -> None:
    seed(dw)
    with dw.session() as session:
        session.delete(session.get(Node, 1))  # the unit of work deletes the root; the database the chain
        session.get(Org, 1).code = "a3"  # type: ignore[union-attr]  # team 10 follows (ON UPDATE CASCADE)
        session.delete(session.get(Org, 2))  # team 20, member z cascade; note 2 set null
    primary, other = sides(dw)
    assert primary["c_node"] == []
    assert primary["c_team"] == [(10, 1, "a3")]
    assert primary["c_member"] == [(10, "x"), (10, "y")]
    assert primary["c_note"] == [(1, 10, "n"), (2, None, "m")]
    assert other == primary
    assert rebuilt_from_events(dw) == primary


def test_statements_through_the_session_are_captured(dw: DualWriter) -> None:
    """session.execute(delete/update(...)) (Core or ORM-enabled) runs through the WriteTx path: captured,
    cascades included, and the session's objects of the changed rows are synchronised."""
    seed(dw)
    with dw.session() as session:
        first, second = session.get(Org, 1), session.get(Org, 2)
        session.execute(delete(org).where(org.c.id == 2))  # team 20, member z cascade; note 2 set null
        result = session.execute(update(Org).where(Org.id == 1).values(code="a4"))  # team 10 follows
        assert result.rowcount == 1
        assert first.code == "a4"  # type: ignore[attr-defined]  # expired by the statement, reloaded
        assert second not in session  # deleted: expunged
    primary, other = sides(dw)
    assert [r[0] for r in primary["c_org"]] == [1]
    assert primary["c_team"] == [(10, 1, "a4")]
    assert primary["c_member"] == [(10, "x"), (10, "y")]
    assert primary["c_note"] == [(1, 10, "n"), (2, None, "m")]
    assert other == primary
    assert rebuilt_from_events(dw) == primary


def test_uncapturable_actions_are_refused_at_catalog_build() -> None:
    m = MetaData()
    Table("p", m, Column("id", Integer, primary_key=True), Column("k", Integer, unique=True))
    key_set_null = Table("kid", m, Column("pid", Integer, ForeignKey("p.id", ondelete="SET NULL"), primary_key=True))
    with pytest.raises(UnsupportedSchemaError, match="SET NULL/SET DEFAULT action on primary-key") as err:
        Tables.of(m, store="x")
    assert isinstance(err.value, ConfigError) and "\n" not in str(err.value)
    m.remove(key_set_null)
    Table(
        "mid",
        m,
        Column("id", Integer, primary_key=True),
        Column("k", Integer, ForeignKey("p.k", onupdate="CASCADE"), unique=True),
    )
    Table(
        "leaf",
        m,
        Column("id", Integer, primary_key=True),
        Column("k", Integer),
        ForeignKeyConstraint(["k"], ["mid.k"], onupdate="CASCADE"),
    )
    with pytest.raises(UnsupportedSchemaError, match="chain of cascades"):
        Tables.of(m, store="x")
