"""Archive store on each backend alone: row images come back exactly; keys archive canonically."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from dualwrite.demo.app.archive import ArchiveStore, key_text
from dualwrite.demo.app.errors import ValidationError


def test_archive_round_trips_row_images(dw, clock) -> None:  # type: ignore[no-untyped-def]
    ar = ArchiveStore(dw, "acme", clock=clock)
    image = {
        "id": 7,
        "when": datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
        "day": date(2026, 1, 2),
        "price": Decimal("19.990"),
        "blob": b"\x00\xff",
        "meta": {"nested": [1, "two", None]},
        "ratio": 0.1,
        "note": "héllo",
        "gone": None,
    }
    rec = ar.archive("memory", "memory_items", {"id": 7}, image)
    assert rec["payload"] == image and rec["original_key"] == "[7]" and rec["archived_at"] == clock.now
    assert ar.get(rec["id"]) == rec
    clock.advance(1)
    later = ar.archive("memory", "memory_items", 7, {**image, "note": "second"})
    ar.archive("memory", "memory_items", (8,), {"id": 8})
    ar.archive("profiles", "profiles", "ada", {"handle": "ada"})
    assert [r["id"] for r in ar.find("memory", "memory_items", 7)] == [rec["id"], later["id"]]
    assert [r["original_key"] for r in ar.find("memory", "memory_items")] == ["[7]", "[7]", "[8]"]
    assert ar.find("profiles", "profiles", "ada")[0]["payload"] == {"handle": "ada"}
    assert ar.find("memory", "nope") == []
    assert ar.delete(rec["id"]) is True and ar.get(rec["id"]) is None


def test_key_text_and_checks(dw, clock) -> None:  # type: ignore[no-untyped-def]
    assert key_text(7) == key_text((7,)) == key_text({"id": 7}) == "[7]"
    assert key_text({"a": "x", "b": 2}) == '["x",2]'
    ar = ArchiveStore(dw, "acme", clock=clock)
    for call, message in [
        (lambda: ar.archive("s", "t", 1, None), "expected a non-empty row image"),
        (lambda: ar.archive("s", "t", 1, {}), "expected a non-empty row image"),
        (lambda: ar.archive("s", "t", None, {"a": 1}), "None is not a key"),
        (lambda: ar.archive("s", "t", "k" * 300, {"a": 1}), "original_key: .* at most 255"),
        (lambda: ar.archive("s", "t", 1, {"a": object()}), "cannot encode a object"),
        (lambda: ar.archive("s", "t", 1, {"a": "nul\x00"}), "contains a NUL"),
    ]:
        with pytest.raises(ValidationError, match=message):
            call()
