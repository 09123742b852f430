"""Profiles store on each backend alone: handles unique per tenant, updates, links and their queries."""

from __future__ import annotations

import pytest

from dualwrite.demo.app.errors import DuplicateError, NotFoundError, ValidationError
from dualwrite.demo.app.profiles import ProfileStore


def test_create_get_update_delete(dw, clock, counts) -> None:  # type: ignore[no-untyped-def]
    ps = ProfileStore(dw, "acme", clock=clock)
    ada = ps.create("ada", display_name="Ada L.", bio="engines", attributes={"langs": ["en", "fr"]})
    assert ada["handle"] == "ada" and ada["attributes"] == {"langs": ["en", "fr"]}
    assert ps.get(ada["id"]) == ada and ps.by_handle("ada") == ada
    assert ps.by_handle("nobody") is None and ps.get(ada["id"] + 1000) is None

    clock.advance(1)
    updated = ps.update(ada["id"], bio=None, attributes={"langs": []})
    assert updated["bio"] is None and updated["display_name"] == "Ada L."  # untouched fields stay
    assert updated["updated_at"] == clock.now and updated["created_at"] == ada["created_at"]
    renamed = ps.update(ada["id"], handle="ada2")
    assert ps.by_handle("ada") is None and ps.by_handle("ada2") == renamed

    ps.create("bob")
    assert [p["handle"] for p in ps.list()] == ["ada2", "bob"]
    assert [p["handle"] for p in ps.list(after_handle="ada2")] == ["bob"]
    assert ps.delete(ada["id"]) is True and ps.delete(ada["id"]) is False
    with pytest.raises(NotFoundError, match=rf"profiles: id {ada['id']} does not exist for this tenant"):
        ps.update(ada["id"], bio="x")


def test_handles_are_unique_per_tenant(dw, clock, counts) -> None:  # type: ignore[no-untyped-def]
    acme, other = ProfileStore(dw, "acme", clock=clock), ProfileStore(dw, "other", clock=clock)
    acme.create("ada")
    bob = acme.create("bob")
    other.create("ada")  # same handle, other tenant: fine
    before = counts(dw)
    with pytest.raises(DuplicateError, match=r"^profiles\.handle: 'ada' is already taken in this tenant$"):
        acme.create("ada")
    # a rename onto a taken handle is caught by the unique constraint (translated, rolled back)
    with pytest.raises(DuplicateError, match=r"^profiles: a row with this handle already exists for the tenant$"):
        acme.update(bob["id"], handle="ada")
    assert counts(dw) == before
    assert acme.get(bob["id"]) == bob
    with pytest.raises(ValidationError, match="leading or trailing spaces"):
        acme.create(" ada")


def test_links_and_linked(dw, clock) -> None:  # type: ignore[no-untyped-def]
    ps = ProfileStore(dw, "acme", clock=clock)
    a, b, c, d = (ps.create(h) for h in ("ann", "bea", "cid", "dan"))
    ab = ps.link(a["id"], b["id"], "follows")
    assert ps.link(a["id"], b["id"], "follows") == ab  # idempotent
    ps.link(a["id"], c["id"], "follows")
    ps.link(a["id"], c["id"], "mentors")
    ps.link(c["id"], a["id"], "follows")
    ps.link(d["id"], a["id"], "blocks")

    handles = lambda rows: [r["handle"] for r in rows]  # noqa: E731
    assert handles(ps.linked(a["id"])) == ["bea", "cid"]  # distinct, by handle
    assert handles(ps.linked(a["id"], "mentors")) == ["cid"]
    assert handles(ps.linked(a["id"], direction="in")) == ["cid", "dan"]
    assert handles(ps.linked(a["id"], direction="both")) == ["bea", "cid", "dan"]
    assert handles(ps.linked(a["id"], "blocks", direction="both")) == ["dan"]
    out = ps.links(a["id"])
    assert [(r["relation"], r["target_profile_id"]) for r in out] == [
        ("follows", b["id"]),
        ("follows", c["id"]),
        ("mentors", c["id"]),
    ]
    assert len(ps.links(a["id"], direction="both")) == 5

    with pytest.raises(ValidationError, match=rf"profile_links: profile {a['id']} cannot link to itself"):
        ps.link(a["id"], a["id"], "follows")
    with pytest.raises(ValidationError, match="direction: 'up' is not one of out, in, both"):
        ps.linked(a["id"], direction="up")  # type: ignore[arg-type]

    assert ps.unlink(a["id"], c["id"], "mentors") == 1
    assert ps.unlink(a["id"], c["id"]) == 1
    assert ps.unlink(a["id"], c["id"]) == 0
    assert ps.delete(a["id"]) is True  # its remaining links go with it
    assert ps.links(b["id"], direction="both") == [] and ps.links(d["id"]) == []
