"""An application's ORM model, written the way users write one, for the ORM capture tests (issue 14):
delete-orphan cascades, a `passive_deletes` relationship (the database's ON DELETE CASCADE does the work),
a many-to-many secondary table, a self-referencing tree and a self-reference with post_update, a
timezone-aware timestamp, a unique column and a database-generated key."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Column, DateTime, ForeignKey, Integer, MetaData, String, Table, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from dualwrite.adapter import DualWriter
from dualwrite.normalize import normalize
from dualwrite.tables import Tables


class Base(DeclarativeBase):
    metadata = MetaData()


post_tags = Table(
    "oc_post_tags",
    Base.metadata,
    Column("post_id", ForeignKey("oc_posts.id", ondelete="CASCADE"), primary_key=True),
    Column("tag_id", ForeignKey("oc_tags.id", ondelete="CASCADE", onupdate="CASCADE"), primary_key=True),
)


class Author(Base):
    __tablename__ = "oc_authors"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(40))
    tenant_id: Mapped[str] = mapped_column(String(10), default="acme")
    mentor_id: Mapped[int | None] = mapped_column(ForeignKey("oc_authors.id"))
    mentor: Mapped[Author | None] = relationship(remote_side=[id], post_update=True)
    posts: Mapped[list[Post]] = relationship(back_populates="author", cascade="all, delete-orphan", order_by="Post.id")


class Post(Base):
    __tablename__ = "oc_posts"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    author_id: Mapped[int] = mapped_column(ForeignKey("oc_authors.id"))
    title: Mapped[str] = mapped_column(String(60))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    author: Mapped[Author] = relationship(back_populates="posts")
    # passive_deletes: the ORM leaves the comments to the database's ON DELETE CASCADE
    comments: Mapped[list[Comment]] = relationship(
        back_populates="post", cascade="all, delete-orphan", passive_deletes=True, order_by="Comment.id"
    )
    tags: Mapped[list[Tag]] = relationship(secondary=post_tags, order_by="Tag.id")


class Comment(Base):
    __tablename__ = "oc_comments"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    post_id: Mapped[int] = mapped_column(ForeignKey("oc_posts.id", ondelete="CASCADE"))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("oc_comments.id", ondelete="CASCADE"))
    body: Mapped[str] = mapped_column(String(80))
    post: Mapped[Post] = relationship(back_populates="comments")
    replies: Mapped[list[Comment]] = relationship(cascade="all, delete-orphan", order_by="Comment.id")


class Tag(Base):
    __tablename__ = "oc_tags"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)  # the database hands these out
    label: Mapped[str] = mapped_column(String(30), unique=True)


TABLES = [Author.__table__, Post.__table__, Comment.__table__, Tag.__table__, post_tags]
T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def catalog() -> Tables:
    return Tables.of(Base.metadata, store="orm")


def rows(engine: Any, table: Table) -> list[Any]:
    """A table's rows, normalized (naive timestamps of timezone-aware columns are UTC) and sorted."""
    with engine.connect() as conn:
        found = [dict(r) for r in conn.execute(select(table)).mappings()]
        conn.rollback()
    return sorted((normalize(r) for r in found), key=repr)


def sides(dw: DualWriter) -> tuple[dict[str, list[Any]], dict[str, list[Any]]]:
    return (
        {t.name: rows(dw.backends.sqlite_read, t) for t in TABLES},
        {t.name: rows(dw.backends.postgres, t) for t in TABLES},
    )


def wipe(dw: DualWriter) -> None:
    """Empty the tables and the bookkeeping on both sides (between hypothesis examples)."""
    for engine in (dw.backends.sqlite, dw.backends.postgres):
        with engine.begin() as conn:
            for t in reversed(TABLES):
                conn.execute(t.delete())
            conn.exec_driver_sql("DELETE FROM _dw_versions")
            conn.exec_driver_sql("DELETE FROM _dw_outbox")
