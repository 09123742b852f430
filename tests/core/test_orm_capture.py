"""ORM capture from the flush itself (issue 14), one test per way a flush changes rows: delete-orphan,
ORM delete cascades, passive_deletes (the database cascades), many-to-many association rows,
self-references (a tree, post_update), key changes with ON UPDATE CASCADE, session.execute() of bulk
statements, the legacy bulk methods, and rolled-back savepoints. Each ends with the primary, the other
side and a replica rebuilt from the outbox's events alone agreeing row for row."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import delete, insert, select, text, update

from dualwrite.adapter import DualWriter
from dualwrite.bookkeeping import outbox
from dualwrite.events import ChangeEvent
from dualwrite.orm_capture import UncapturableStatementError
from dualwrite.settings import Settings
from dualwrite.testing import prepared_writer
from tests.core.orm_model import T0, TABLES, Author, Comment, Post, Tag, catalog, post_tags, rows, sides


@pytest.fixture(params=["dual_write", "postgres_primary"])
def dw(settings: Settings, request: pytest.FixtureRequest) -> Iterator[DualWriter]:
    w = prepared_writer(settings, catalog(), phase=request.param)
    yield w
    w.close()


def rebuilt(dw: DualWriter) -> dict[str, list]:
    """The other side wiped, then rebuilt from the primary's outbox alone (in reverse order)."""
    primary = dw.phases.current().primary
    with dw.backends.read_engine(primary).connect() as conn:
        events = [ChangeEvent.from_json(r.payload) for r in conn.execute(outbox.select().order_by(outbox.c.seq))]
    other = "postgres" if primary == "sqlite" else "sqlite"
    with dw.backends.apply_engine(other).begin() as conn:
        for t in reversed(TABLES):
            conn.execute(t.delete())
        conn.exec_driver_sql("DELETE FROM _dw_versions")
    dw.apply(other, list(reversed(events)))
    return {t.name: rows(dw.backends.read_engine(other), t) for t in TABLES}


def agree(dw: DualWriter) -> dict[str, list]:
    primary, other = sides(dw) if dw.phases.current().primary == "sqlite" else sides(dw)[::-1]
    assert other == primary
    assert rebuilt(dw) == primary
    return primary


def ids(state: dict[str, list], table: str) -> list[int]:
    return sorted(r["id"] for r in state[table])


def seed(dw: DualWriter) -> None:
    with dw.session() as s:
        tags = [Tag(label=f"t{i}") for i in range(3)]
        a = Author(id=1, name="ann", posts=[Post(id=10, title="p10", at=T0), Post(id=11, title="p11", at=T0)])
        b = Author(id=2, name="bob", posts=[Post(id=20, title="p20", at=T0 + timedelta(hours=1))])
        s.add_all([a, b, *tags])
        s.flush()
        a.posts[0].tags = tags[:2]
        b.posts[0].tags = tags[1:]
        root = Comment(id=100, body="root", post=a.posts[0])
        root.replies = [Comment(id=101, body="r1", post_id=10), Comment(id=102, body="r2", post_id=10)]
        root.replies[0].replies = [Comment(id=103, body="r1.1", post_id=10)]
        s.add_all([root, Comment(id=200, body="c", post=b.posts[0])])


def test_delete_orphan_is_captured_and_a_reused_id_finds_no_ghost(dw: DualWriter) -> None:
    seed(dw)
    with dw.session() as s:
        ann = s.get(Author, 1)
        ann.posts.remove(s.get(Post, 11))  # an orphan: deleted by the flush, in no session list
    assert 11 not in ids(agree(dw), "oc_posts")
    with dw.session() as s:  # the id comes back, under the other author: no ghost of the old row
        bob = s.get(Author, 2)
        bob.posts.append(Post(id=11, title="new 11", at=T0))
    state = agree(dw)
    assert [(r["id"], r["author_id"], r["title"]) for r in state["oc_posts"] if r["id"] == 11] == [(11, 2, "new 11")]


def test_orm_delete_cascade_and_passive_deletes(dw: DualWriter) -> None:
    seed(dw)
    with dw.session() as s:
        s.delete(s.get(Post, 10))  # passive_deletes: comments 100-103 go by ON DELETE CASCADE; tag links too
    state = agree(dw)
    assert ids(state, "oc_comments") == [200] and {r["post_id"] for r in state["oc_post_tags"]} == {20}
    with dw.session() as s:
        s.delete(s.get(Author, 2))  # the ORM deletes post 20 (delete cascade), the database its comment
    state = agree(dw)
    assert ids(state, "oc_posts") == [11] and state["oc_comments"] == [] and state["oc_post_tags"] == []


def test_many_to_many_rows(dw: DualWriter) -> None:
    seed(dw)
    with dw.session() as s:
        post = s.get(Post, 10)
        post.tags.remove(post.tags[0])
        post.tags.append(s.scalars(select(Tag).where(Tag.label == "t2")).one())
        other = s.get(Post, 20)
        other.tags.clear()
    state = agree(dw)
    assert len(state["oc_post_tags"]) == 2 and {r["post_id"] for r in state["oc_post_tags"]} == {10}
    with dw.session() as s:  # a tag deleted: the database removes its links (ON DELETE CASCADE)
        s.delete(s.scalars(select(Tag).where(Tag.label == "t2")).one())
    assert len(agree(dw)["oc_post_tags"]) == 1


def test_self_references(dw: DualWriter) -> None:
    seed(dw)
    with dw.session() as s:
        root = s.get(Comment, 100)
        root.replies.remove(s.get(Comment, 101))  # an orphan with its own reply: both go
        ann, bob = s.get(Author, 1), s.get(Author, 2)
        ann.mentor, bob.mentor = bob, ann  # a cycle: written by post_update statements
    state = agree(dw)
    assert ids(state, "oc_comments") == [100, 102, 200]
    assert {r["id"]: r["mentor_id"] for r in state["oc_authors"]} == {1: 2, 2: 1}
    with dw.session() as s:
        s.get(Author, 2).mentor = None
        s.delete(s.get(Comment, 100))  # the ORM deletes the subtree
    state = agree(dw)
    assert ids(state, "oc_comments") == [200] and {r["id"]: r["mentor_id"] for r in state["oc_authors"]} == {
        1: 2,
        2: None,
    }


def test_a_key_change_follows_on_update_cascade(dw: DualWriter) -> None:
    seed(dw)
    with dw.session() as s:
        tag = s.scalars(select(Tag).where(Tag.label == "t1")).one()
        old = tag.id
        tag.id = 99  # the links follow (ON UPDATE CASCADE): old keys deleted, new ones written
    state = agree(dw)
    assert old not in {r["tag_id"] for r in state["oc_post_tags"]}
    assert sorted(r["post_id"] for r in state["oc_post_tags"] if r["tag_id"] == 99) == [10, 20]


def test_session_execute_bulk_statements(dw: DualWriter) -> None:
    seed(dw)
    with dw.session() as s:
        post = s.get(Post, 10)
        res = s.execute(update(Post).where(Post.author_id == 1).values(title="bulk"))
        assert res.rowcount == 2 and post.title == "bulk"  # expired and reloaded, as synchronize="fetch"
        s.execute(delete(Comment).where(Comment.id == 101))  # its reply 103 goes by ON DELETE CASCADE
        s.execute(insert(Tag), [{"label": "x1"}, {"label": "x2"}])  # ORM bulk INSERT, keys from the database
        s.execute(update(Post), [{"id": 20, "title": "by key"}, {"id": 11, "title": "by key too"}])
        s.execute(insert(post_tags).values(post_id=11, tag_id=1))  # Core, on the secondary table
    state = agree(dw)
    assert ids(state, "oc_comments") == [100, 102, 200]
    assert {r["id"]: r["title"] for r in state["oc_posts"]} == {10: "bulk", 11: "by key too", 20: "by key"}
    assert sorted(r["label"] for r in state["oc_tags"]) == ["t0", "t1", "t2", "x1", "x2"]


def test_legacy_bulk_methods_and_the_session_connection(dw: DualWriter) -> None:
    seed(dw)
    with dw.session() as s:
        s.bulk_insert_mappings(Tag, [{"id": 50, "label": "b50"}, {"id": 51, "label": "b51"}])  # type: ignore[arg-type]
        s.bulk_save_objects([Tag(id=52, label="b52")])
        tags = Tag.__table__
        s.connection().execute(update(tags).where(tags.c.label.like("b%")).values(label=tags.c.label + "!"))
    with pytest.raises(Exception, match="UNIQUE|unique|duplicate"):  # the database's own error, nothing else
        pass_through = False
        with dw.session() as s:
            s.connection().execute(update(Tag.__table__).where(Tag.__table__.c.id > 49).values(label="same"))
            pass_through = True
    assert not pass_through
    state = agree(dw)
    assert {r["id"]: r["label"] for r in state["oc_tags"] if r["id"] >= 50} == {50: "b50!", 51: "b51!", 52: "b52!"}


def test_rolled_back_savepoints_and_failures_leave_the_other_side_equal(dw: DualWriter) -> None:
    seed(dw)
    with dw.session() as s:
        nested = s.begin_nested()
        s.get(Post, 10).title = "rolled back"
        s.delete(s.get(Comment, 200))
        s.flush()
        nested.rollback()
        s.get(Post, 11).title = "kept"
    state = agree(dw)
    assert {r["id"]: r["title"] for r in state["oc_posts"]} == {10: "p10", 11: "kept", 20: "p20"}
    assert 200 in ids(state, "oc_comments")


def test_what_cannot_be_captured_is_refused(dw: DualWriter) -> None:
    seed(dw)
    before = agree(dw)
    with pytest.raises(UncapturableStatementError, match="raw SQL text that changes rows"), dw.session() as s:
        s.execute(text("DELETE FROM oc_comments"))
    with pytest.raises(UncapturableStatementError, match="returning"), dw.session() as s:
        s.execute(update(Post).values(title="x").returning(Post.id))
    assert agree(dw) == before
