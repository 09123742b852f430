"""Debate store (P1): debates between agents, kept as an ordered, complete transcript of turns.

A turn's number is assigned in the writing transaction as the debate's next (the debate row is locked on
Postgres; SQLite's write lock serialises anyway), and unique (tenant, debate, turn_no) guards it. A
turn's agent must belong to the same debate: the composite foreign key (agent_id, debate_id, tenant_id)
makes the database refuse anything else too.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypedDict, cast

# Each store module declares its tables from the same pieces (SQLAlchemy's, base.py's mixins and column
# helpers), so these import lists repeat by design: one store, one self-contained module.
from sqlalchemy import (
    CheckConstraint,
    ForeignKeyConstraint,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
    select,
)
from sqlalchemy.orm import Mapped, mapped_column

from dualwrite.demo.app.base import Base, TenantKeyed, TenantKeyedRow, core_tables
from dualwrite.demo.app.columns import ref_column, stamp_column, tenant_fk
from dualwrite.demo.app.common import TenantStore, check_id, check_text
from dualwrite.demo.app.errors import StateError, ValidationError
from dualwrite.types import OrderedString

DEBATE_STATUSES = ("open", "closed")


class Debate(TenantKeyed, Base):
    __tablename__ = "debates"
    __table_args__ = (
        UniqueConstraint("id", "tenant_id"),
        Index(None, "tenant_id", "created_at"),
        CheckConstraint(f"status IN {DEBATE_STATUSES}", name="status"),
    )
    topic: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="open")
    created_at: Mapped[datetime] = stamp_column()
    closed_at: Mapped[datetime | None] = stamp_column(nullable=True)


class DebateAgent(TenantKeyed, Base):
    __tablename__ = "debate_agents"
    __table_args__ = (
        UniqueConstraint("tenant_id", "debate_id", "name"),
        UniqueConstraint("id", "debate_id", "tenant_id"),  # target of the turns' foreign key
        ForeignKeyConstraint(*tenant_fk("debate_id", "debates")),
    )
    debate_id: Mapped[int] = ref_column()
    name: Mapped[str] = mapped_column(OrderedString(128))
    role: Mapped[str | None] = mapped_column(String(128))  # the agent's role or stance
    model: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = stamp_column()


class DebateTurn(TenantKeyed, Base):
    __tablename__ = "debate_turns"
    __table_args__ = (
        UniqueConstraint("tenant_id", "debate_id", "turn_no"),
        ForeignKeyConstraint(*tenant_fk("debate_id", "debates")),
        ForeignKeyConstraint(*tenant_fk("agent_id", "debate_agents", "debate_id")),
        Index(None, "tenant_id", "agent_id"),
        CheckConstraint("turn_no >= 1", name="turn_no"),
    )
    debate_id: Mapped[int] = ref_column()
    agent_id: Mapped[int] = ref_column()
    turn_no: Mapped[int] = mapped_column(Integer)
    content: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = stamp_column()


debates, debate_agents, debate_turns = core_tables(Debate, DebateAgent, DebateTurn)


class DebateRow(TenantKeyedRow):
    topic: str
    status: str
    created_at: datetime
    closed_at: datetime | None


class DebateAgentRow(TenantKeyedRow):
    debate_id: int
    name: str
    role: str | None
    model: str | None
    created_at: datetime


class DebateTurnRow(TenantKeyedRow):
    debate_id: int
    agent_id: int
    turn_no: int
    content: str
    created_at: datetime


class TranscriptTurn(TypedDict):
    turn_no: int
    agent_id: int
    agent: str
    role: str | None
    content: str
    created_at: datetime


class DebateStore(TenantStore):
    store = "debate"

    def start(self, topic: str) -> DebateRow:
        check_text(topic, "debates.topic", empty=False)
        with self.write() as tx:
            return cast(DebateRow, self.insert(tx, debates, {"topic": topic, "status": "open"}))

    def close(self, debate_id: int) -> DebateRow:
        with self.write() as tx:
            debate = self.owned(tx, debates, debate_id, "debates.id", lock=True)
            if debate["status"] == "closed":
                return cast(DebateRow, debate)
            row = self.update_by_id(tx, debates, debate_id, {"status": "closed", "closed_at": self.now()})
            return cast(DebateRow, row)

    def add_agent(
        self, debate_id: int, name: str, *, role: str | None = None, model: str | None = None
    ) -> DebateAgentRow:
        check_text(name, "debate_agents.name", 128, empty=False)
        values = {"debate_id": debate_id, "name": name, "role": role, "model": model}
        with self.write() as tx:
            self.owned(tx, debates, debate_id, "debate_agents.debate_id")
            return cast(DebateAgentRow, self.insert(tx, debate_agents, values))

    def add_turn(self, debate_id: int, agent_id: int, content: str) -> DebateTurnRow:
        """Append a turn by one of the debate's agents; its turn_no is the debate's next (from 1)."""
        check_text(content, "debate_turns.content")
        with self.write() as tx:
            debate = self.owned(tx, debates, debate_id, "debate_turns.debate_id", lock=True)
            if debate["status"] != "open":
                raise StateError(f"debates: debate {debate_id} is {debate['status']}; no more turns")
            agent = self.owned(tx, debate_agents, agent_id, "debate_turns.agent_id")
            if agent["debate_id"] != debate_id:
                raise ValidationError(f"debate_turns.agent_id: agent {agent_id} is not in debate {debate_id}")
            last = tx.connection.execute(
                select(func.max(debate_turns.c.turn_no)).where(*self._in_debate(debate_turns, debate_id))
            ).scalar()
            values = {
                "debate_id": debate_id,
                "agent_id": agent_id,
                "turn_no": (last or 0) + 1,
                "content": content,
            }
            return cast(DebateTurnRow, self.insert(tx, debate_turns, values))

    def get(self, debate_id: int) -> DebateRow | None:
        return cast(DebateRow | None, self.get_row("get", debates, debate_id))

    def agents(self, debate_id: int) -> list[DebateAgentRow]:
        stmt = select(debate_agents).where(*self._in_debate(debate_agents, debate_id)).order_by(debate_agents.c.id)
        return cast(list[DebateAgentRow], self.rows("agents", stmt, debate_id=debate_id))

    def turns(self, debate_id: int) -> list[DebateTurnRow]:
        stmt = select(debate_turns).where(*self._in_debate(debate_turns, debate_id)).order_by(debate_turns.c.turn_no)
        return cast(list[DebateTurnRow], self.rows("turns", stmt, debate_id=debate_id))

    def _in_debate(self, table: Table, debate_id: int) -> list[Any]:
        """Conditions for the tenant's rows of `table` (agents or turns) in one debate."""
        return [self.mine(table), table.c.debate_id == check_id(debate_id, "debate_id")]

    def transcript(self, debate_id: int) -> list[TranscriptTurn]:
        """The whole conversation in turn order, with each turn's agent name and role."""
        t, a = debate_turns, debate_agents
        stmt = (
            select(
                t.c.turn_no,
                t.c.agent_id,
                a.c.name.label("agent"),
                a.c.role,
                t.c.content,
                t.c.created_at,
            )
            .join(a, (a.c.id == t.c.agent_id) & (a.c.tenant_id == t.c.tenant_id))
            .where(*self._in_debate(t, debate_id))
            .order_by(t.c.turn_no)
        )
        return cast(list[TranscriptTurn], self.rows("transcript", stmt, debate_id=debate_id))
