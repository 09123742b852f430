"""The issue-14 property: random ORM session operations on a model with delete-orphan, passive_deletes,
many-to-many and self-references, in dual_write, leave SQLite, Postgres and a log of the session's
intended changes (a plain Python model of what each operation means) equal row for row, after every
session; and a replica rebuilt from the outbox's events alone equals them too."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from dualwrite.adapter import DualWriter
from dualwrite.normalize import normalize
from dualwrite.settings import Settings
from dualwrite.testing import prepared_writer
from tests.core.orm_model import T0, Author, Comment, Post, Tag, catalog, sides, wipe
from tests.core.test_orm_capture import rebuilt


class Log:
    """The intended state: every operation applied to plain dicts, with the model's cascade rules."""

    def __init__(self) -> None:
        self.authors: dict[int, dict[str, Any]] = {}
        self.posts: dict[int, dict[str, Any]] = {}
        self.comments: dict[int, dict[str, Any]] = {}
        self.tags: dict[int, dict[str, Any]] = {}
        self.links: set[tuple[int, int]] = set()
        self.next_id = 1

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id

    def drop_comment(self, cid: int) -> None:  # replies go with it (ORM cascade or ON DELETE CASCADE)
        for child in [k for k, c in self.comments.items() if c["parent_id"] == cid]:
            self.drop_comment(child)
        self.comments.pop(cid, None)

    def drop_post(self, pid: int) -> None:
        for cid in [k for k, c in self.comments.items() if c["post_id"] == pid]:
            self.comments.pop(cid, None)
        self.links = {(p, t) for p, t in self.links if p != pid}
        del self.posts[pid]

    def drop_author(self, aid: int) -> None:
        for pid in [k for k, p in self.posts.items() if p["author_id"] == aid]:
            self.drop_post(pid)
        del self.authors[aid]

    def tables(self) -> dict[str, list[Any]]:
        def norm(rows: Any) -> list[Any]:
            return sorted((normalize(r) for r in rows), key=repr)

        return {
            "oc_authors": norm(self.authors.values()),
            "oc_posts": norm(self.posts.values()),
            "oc_comments": norm(self.comments.values()),
            "oc_tags": norm(self.tags.values()),
            "oc_post_tags": norm({"post_id": p, "tag_id": t} for p, t in self.links),
        }


OPS = (
    "add_author", "add_post", "orphan_post", "delete_post", "delete_author", "set_mentor", "add_comment",
    "orphan_reply", "delete_comment", "add_tag", "delete_tag", "link", "unlink", "retitle", "bulk_retitle",
    "bulk_delete_comments", "flush",
)  # fmt: skip


class Draws:
    """The operations' choices from hypothesis (a seeded random.Random can stand in: SeededDraws)."""

    def __init__(self, data: st.DataObject) -> None:
        self.data = data

    def choice(self, options: list[Any]) -> Any:
        return self.data.draw(st.sampled_from(options))

    def integer(self, lo: int, hi: int) -> int:
        return self.data.draw(st.integers(lo, hi))

    def text(self) -> str:
        return self.data.draw(st.text("abcxyz é", max_size=12))


class SeededDraws(Draws):
    def __init__(self, rng: Any) -> None:
        self.rng = rng

    def choice(self, options: list[Any]) -> Any:
        return self.rng.choice(options)

    def integer(self, lo: int, hi: int) -> int:
        return int(self.rng.randint(lo, hi))

    def text(self) -> str:
        return "".join(self.rng.choice("abcxyz é") for _ in range(self.rng.randrange(13)))


def step(op: str, s: Session, log: Log, draw: Draws) -> None:  # noqa: C901, PLR0912 - one branch per operation
    def pick(d: dict[int, Any]) -> int | None:
        return draw.choice(sorted(d)) if d else None

    if op == "add_author":
        aid = log.new_id()
        s.add(Author(id=aid, name=f"a{aid}"))
        log.authors[aid] = {"id": aid, "name": f"a{aid}", "tenant_id": "acme", "mentor_id": None}
    elif op == "add_post" and (aid := pick(log.authors)) is not None:
        pid, at = log.new_id(), T0 + timedelta(minutes=draw.integer(0, 10**6), microseconds=7)
        author = s.get(Author, aid)
        author.posts.append(Post(id=pid, title=f"p{pid}", at=at))  # type: ignore[union-attr]
        log.posts[pid] = {"id": pid, "author_id": aid, "title": f"p{pid}", "at": at}
    elif op == "orphan_post" and (pid := pick(log.posts)) is not None:
        author = s.get(Author, log.posts[pid]["author_id"])
        author.posts.remove(s.get(Post, pid))  # type: ignore[union-attr]  # delete-orphan
        log.drop_post(pid)
    elif op == "delete_post" and (pid := pick(log.posts)) is not None:
        s.delete(s.get(Post, pid))  # passive_deletes: the database deletes its comments
        log.drop_post(pid)
    elif op == "delete_author" and (aid := pick(log.authors)) is not None:
        for other in s.scalars(select(Author).where(Author.mentor_id == aid)):
            other.mentor = None
            log.authors[other.id]["mentor_id"] = None
        s.delete(s.get(Author, aid))  # the ORM deletes the posts; the database their comments
        log.drop_author(aid)
    elif op == "set_mentor" and (aid := pick(log.authors)) is not None:
        mid = draw.choice([None, *sorted(log.authors)])
        author = s.get(Author, aid)
        author.mentor = None if mid is None else s.get(Author, mid)  # type: ignore[union-attr]  # post_update
        log.authors[aid]["mentor_id"] = mid
    elif op == "add_comment" and (pid := pick(log.posts)) is not None:
        under = [k for k, c in log.comments.items() if c["post_id"] == pid]
        parent = draw.choice([None, *sorted(under)])
        cid = log.new_id()
        comment = Comment(id=cid, body=f"c{cid}", post_id=pid)
        if parent is None:
            post = s.get(Post, pid)
            post.comments.append(comment)  # type: ignore[union-attr]
        else:
            above = s.get(Comment, parent)
            above.replies.append(comment)  # type: ignore[union-attr]  # self-reference
        # flushed at once: a pending comment under a post orphaned later in the session makes SQLAlchemy's
        # own flush fail ("NULL for primary key"), with or without dualwrite
        s.flush()
        log.comments[cid] = {"id": cid, "post_id": pid, "parent_id": parent, "body": f"c{cid}"}
    elif op == "orphan_reply":
        replies = {k: c for k, c in log.comments.items() if c["parent_id"] is not None}
        if (cid := pick(replies)) is not None:
            parent = s.get(Comment, replies[cid]["parent_id"])
            parent.replies.remove(s.get(Comment, cid))  # type: ignore[union-attr]
            log.drop_comment(cid)
    elif op == "delete_comment" and (cid := pick(log.comments)) is not None:
        s.delete(s.get(Comment, cid))
        log.drop_comment(cid)
    elif op == "add_tag":
        label = f"tag{log.new_id()}"
        tag = Tag(label=label)
        s.add(tag)
        s.flush()  # the database hands out the key
        log.tags[tag.id] = {"id": tag.id, "label": label}
    elif op == "delete_tag" and (tid := pick(log.tags)) is not None:
        s.delete(s.get(Tag, tid))  # ON DELETE CASCADE removes its links
        del log.tags[tid]
        log.links = {(p, t) for p, t in log.links if t != tid}
    elif op in ("link", "unlink") and log.posts and log.tags:
        pid, tid = pick(log.posts), pick(log.tags)
        post, tag = s.get(Post, pid), s.get(Tag, tid)
        if op == "link" and (pid, tid) not in log.links:
            post.tags.append(tag)  # type: ignore[union-attr]
            log.links.add((pid, tid))  # type: ignore[arg-type]
        elif op == "unlink" and (pid, tid) in log.links:
            post.tags.remove(tag)  # type: ignore[union-attr]
            log.links.discard((pid, tid))  # type: ignore[arg-type]
    elif op == "retitle" and (pid := pick(log.posts)) is not None:
        title = draw.text()
        s.get(Post, pid).title = title  # type: ignore[union-attr]
        log.posts[pid]["title"] = title
    elif op == "bulk_retitle" and (aid := pick(log.authors)) is not None:
        s.execute(update(Post).where(Post.author_id == aid).values(title="bulk"))
        for p in log.posts.values():
            if p["author_id"] == aid:
                p["title"] = "bulk"
    elif op == "bulk_delete_comments" and (pid := pick(log.posts)) is not None:
        s.execute(delete(Comment).where(Comment.post_id == pid, Comment.parent_id.is_(None)))
        for cid in [k for k, c in log.comments.items() if c["post_id"] == pid and c["parent_id"] is None]:
            log.drop_comment(cid)  # the replies by ON DELETE CASCADE
    elif op == "flush":
        s.flush()


@pytest.fixture
def dw(settings: Settings) -> Iterator[DualWriter]:
    w = prepared_writer(settings, catalog(), phase="dual_write")
    yield w
    w.close()


@hsettings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_sessions_agree_with_the_log(dw: DualWriter, data: st.DataObject) -> None:
    wipe(dw)
    log = Log()
    draws = Draws(data)
    for _session in range(draws.integer(1, 4)):
        with dw.session() as s:
            for _ in range(draws.integer(1, 8)):
                step(draws.choice(list(OPS)), s, log, draws)
        lite, pg = sides(dw)
        intended = log.tables()
        assert lite == intended, "SQLite differs from the log"
        assert pg == intended, "Postgres differs from the log"
    assert rebuilt(dw) == log.tables()
