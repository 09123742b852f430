"""Memory store on each backend alone: upserts, ordered prefix listing, TTLs, retention pruning."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from dualwrite.demo.app.common import prefix_range
from dualwrite.demo.app.errors import ValidationError
from dualwrite.demo.app.memory import MemoryStore, memory_items


def test_put_get_replace_delete(dw, clock) -> None:  # type: ignore[no-untyped-def]
    mem = MemoryStore(dw, "acme", clock=clock)
    first = mem.put("chat", "greeting", "hello", metadata={"lang": "en", "tags": ["a", 1, 2.5, None, True]})
    assert first["id"] >= 1 and first["tenant_id"] == "acme"
    assert first["metadata"] == {"lang": "en", "tags": ["a", 1, 2.5, None, True]}
    assert first["created_at"] == first["updated_at"] == clock.now and first["expires_at"] is None
    assert mem.get("chat", "greeting") == first

    created = clock.now
    clock.advance(5)
    second = mem.put("chat", "greeting", "bonjour")
    assert second["id"] == first["id"]  # an upsert keeps the row
    assert (second["content"], second["metadata"]) == ("bonjour", {})
    assert second["created_at"] == created and second["updated_at"] == clock.now
    assert mem.get("chat", "greeting") == second
    assert mem.get_id(first["id"]) == second

    assert mem.get("chat", "missing") is None and mem.get("other", "greeting") is None
    assert mem.delete("chat", "greeting") is True
    assert mem.delete("chat", "greeting") is False
    assert mem.get("chat", "greeting") is None


KEYS = ["b", "B", "a", "ä", "_x", "a-b", "ab", "😀", "Z", "a\U0010ffff", "Ab", "a b"]


def test_list_orders_by_code_point_with_prefix_and_paging(dw, clock) -> None:  # type: ignore[no-untyped-def]
    mem = MemoryStore(dw, "acme", clock=clock)
    for key in KEYS:
        mem.put("ns", key, f"v-{key}")
    mem.put("other", "a", "not listed")
    assert [r["key"] for r in mem.list("ns", limit=100)] == sorted(KEYS)
    assert [r["key"] for r in mem.list("ns", "a")] == sorted(k for k in KEYS if k.startswith("a"))
    assert [r["key"] for r in mem.list("ns", "A")] == ["Ab"]
    assert [r["key"] for r in mem.list("ns", "a\U0010ffff")] == ["a\U0010ffff"]
    assert mem.list("ns", "zzz") == []
    page1 = mem.list("ns", limit=5)
    page2 = mem.list("ns", limit=5, after=page1[-1]["key"])
    assert [r["key"] for r in page1 + page2] == sorted(KEYS)[:10]
    with pytest.raises(ValidationError, match="limit"):
        mem.list("ns", limit=0)


def test_prefix_range_bounds() -> None:
    assert prefix_range(memory_items.c.key, "") == []
    # the next code point after U+D7FF is a surrogate, which cannot be stored: jump past them
    upper = prefix_range(memory_items.c.key, "a\ud7ff")[1].right.value
    assert upper == "a\ue000"
    assert prefix_range(memory_items.c.key, "a\U0010ffff")[1].right.value == "b"


def test_ttl_hides_at_once_and_prune_deletes(dw, clock, counts) -> None:  # type: ignore[no-untyped-def]
    mem = MemoryStore(dw, "acme", clock=clock)
    short = mem.put("cache", "short", "x", ttl_seconds=10)
    mem.put("cache", "long", "y", ttl_seconds=1000)
    mem.put("cache", "forever", "z")
    assert short["expires_at"] == clock.now + timedelta(seconds=10)
    clock.advance(10)  # expires_at is exclusive: an item is gone at its expiry instant
    assert mem.get("cache", "short") is None
    assert mem.get("cache", "short", now=clock.now - timedelta(microseconds=1)) is not None
    assert [r["key"] for r in mem.list("cache")] == ["forever", "long"]
    assert mem.get_id(short["id"]) is not None  # hidden, not yet deleted
    before = counts(dw)
    assert mem.prune() == 1
    assert mem.get_id(short["id"]) is None
    after = counts(dw)
    assert after["memory_items"] == before["memory_items"] - 1
    assert after["_dw_outbox"] == before["_dw_outbox"] + 1  # the deletion is a captured change
    assert mem.prune() == 0


def test_retention_policy_prunes_items_not_written_within_ttl(dw, clock) -> None:  # type: ignore[no-untyped-def]
    mem = MemoryStore(dw, "acme", clock=clock)
    assert mem.retention("chat") is None
    policy = mem.set_retention("chat", 60)
    assert policy is not None and policy["ttl_seconds"] == 60
    assert mem.set_retention("chat", 120)["id"] == policy["id"]  # type: ignore[index]
    assert mem.retention("chat") == 120
    mem.set_retention("notes", 3600)
    assert [r["namespace"] for r in mem.retentions()] == ["chat", "notes"]

    mem.put("chat", "old", "1")
    mem.put("chat", "refreshed", "2")
    mem.put("notes", "old-note", "3")
    mem.put("free", "old-free", "4")
    mem.put("chat", "expiring", "5", ttl_seconds=30)
    clock.advance(100)
    mem.put("chat", "refreshed", "2b")  # a write restarts the item's retention clock
    mem.put("chat", "new", "6")
    clock.advance(30)
    assert mem.prune() == 2  # "expiring" (expired) and "old" (130s > 120s); each counted once
    assert [r["key"] for r in mem.list("chat")] == ["new", "refreshed"]
    assert mem.get("notes", "old-note") and mem.get("free", "old-free")
    assert mem.prune(clock.now + timedelta(hours=2)) == 3  # chat: new, refreshed; notes: old-note
    assert mem.get("free", "old-free") is not None  # no policy, no expiry: kept

    assert mem.set_retention("chat", None) is None
    assert mem.retention("chat") is None


BAD_CALLS = [
    (lambda m: m.put("ns", "k" * 256, "v"), r"memory_items\.key: 256 characters, at most 255"),
    (lambda m: m.put("n" * 129, "k", "v"), r"memory_items\.namespace: 129 characters"),
    (lambda m: m.put("ns", "k", "nul\x00byte"), r"memory_items\.content: contains a NUL"),
    (lambda m: m.put("ns", "k", "lone \ud800"), r"memory_items\.content: contains a lone surrogate"),
    (lambda m: m.put("ns", "k", "v", metadata={"x": float("nan")}), r"memory_items\.metadata: nan"),
    (lambda m: m.put("ns", "k", "v", metadata={"x": "a\x00"}), r"memory_items\.metadata: contains a NUL"),
    (lambda m: m.put("ns", "k", "v", metadata={1: "x"}), r"object key 1 is not text"),
    (lambda m: m.put("ns", "k", "v", metadata={"d": datetime.now(UTC)}), r"datetime is not a JSON value"),
    (lambda m: m.put("ns", "k", "v", ttl_seconds=0), r"memory_items\.ttl_seconds: 0"),
    (lambda m: m.put("ns", "k", "v", expires_at=datetime(2030, 1, 1)), r"timezone-aware"),
    (lambda m: m.put("ns", "k", 5), r"memory_items\.content: expected text, got int"),
    (lambda m: m.get_id("1"), r"memory_items\.id: '1' is not a row id"),
    (lambda m: m.set_retention("ns", -1), r"memory_retention\.ttl_seconds"),
]


def test_values_either_backend_would_mangle_are_refused_on_both(dw, clock, counts) -> None:  # type: ignore[no-untyped-def]
    mem = MemoryStore(dw, "acme", clock=clock)
    before = counts(dw)
    for call, message in BAD_CALLS:
        with pytest.raises(ValidationError, match=message):
            call(mem)
    assert counts(dw) == before


def test_tenant_id_is_checked() -> None:
    with pytest.raises(ValidationError, match="tenant_id: must not be empty"):
        MemoryStore(None, " ")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="tenant_id: 65 characters"):
        MemoryStore(None, "t" * 65)  # type: ignore[arg-type]
