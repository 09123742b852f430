"""Deterministic values of every kind the models hold, from a seeded random generator.

Chosen to catch what goes wrong between engines: unicode outside the BMP and combining marks, Numeric
values at the edge of (12,2), timestamps with microseconds (always timezone-aware, UTC: SQLite's
DateTime(timezone=True) keeps the wall clock only), JSON with nesting, unicode keys, floats and nulls,
bytes with NULs and every byte value.
"""

from __future__ import annotations

import hashlib
import random
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from tests.userapp.models import Tier

WORDS = [
    "alpha",
    "Zoë",
    "naïve",
    "漢字",
    "日本語",
    "Ελληνικά",
    "😀",
    "a\u0301",
    "ß",
    "İstanbul",
    "\u05e9\u05dc\u05d5\u05dd",
]
EPOCH = datetime(2020, 1, 1, tzinfo=UTC)
# Numeric(12, 2): ten integer digits at most.
MAX_MONEY = Decimal("9999999999.99")
DOC_TEXT_BYTES = 1_000_000
DOC_BLOB_BYTES = 300_000


class Values:
    def __init__(self, seed: int | str) -> None:
        self.r = random.Random(seed)

    def text(self, words: int = 4) -> str:
        return " ".join(self.r.choice(WORDS) for _ in range(self.r.randint(1, words)))

    def money(self) -> Decimal:
        pick = self.r.random()
        if pick < 0.05:
            return MAX_MONEY if self.r.random() < 0.5 else -MAX_MONEY
        if pick < 0.1:
            return Decimal("0.01") * self.r.choice([1, -1, 10, 99])
        return Decimal(self.r.randint(-(10**9), 10**11)).scaleb(-2)

    def moment(self) -> datetime:
        """An aware UTC timestamp with microseconds."""
        return EPOCH + timedelta(seconds=self.r.randint(0, 10**8), microseconds=self.r.randint(0, 999_999))

    def day(self) -> date | None:
        return None if self.r.random() < 0.2 else date(1950, 1, 1) + timedelta(days=self.r.randint(0, 30_000))

    def tier(self) -> Tier:
        return self.r.choice(list(Tier))

    def flag(self) -> bool:
        return self.r.random() < 0.5

    def doc(self, depth: int = 0) -> Any:
        kinds = ["int", "str", "float", "bool", "null"] + (["list", "dict"] if depth < 2 else [])
        kind = self.r.choice(kinds)
        if kind == "int":
            return self.r.randint(-(2**40), 2**40)
        if kind == "str":
            return self.text(3)
        if kind == "float":
            return self.r.choice([0.1, 1.5, -2.25, 1e-7, 123456.789])
        if kind == "bool":
            return self.flag()
        if kind == "null":
            return None
        if kind == "list":
            return [self.doc(depth + 1) for _ in range(self.r.randint(0, 3))]
        return {self.r.choice(WORDS) + str(i): self.doc(depth + 1) for i in range(self.r.randint(0, 3))}

    def prefs(self) -> dict[str, Any] | None:
        if self.r.random() < 0.15:
            return None
        return {"theme": self.r.choice(["dark", "light"]), "tags": [self.text(1) for _ in range(2)], "x": self.doc()}

    def blob(self, size: int | None = None) -> bytes:
        n = self.r.randint(0, 64) if size is None else size
        return self.r.randbytes(n)

    def maybe_blob(self) -> bytes | None:
        return None if self.r.random() < 0.3 else self.blob()

    def big_text(self, size: int = DOC_TEXT_BYTES) -> str:
        """About `size` bytes of UTF-8 text (mixed scripts), not one repeated character."""
        unit = " ".join(WORDS) + "\n"
        seed = hashlib.sha256(str(self.r.random()).encode()).hexdigest()
        body = (seed + unit) * (size // len((seed + unit).encode()) + 1)
        return body.encode()[:size].decode("utf-8", "ignore")
