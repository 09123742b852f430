"""The writers' log format for values: JSON, with the types JSON lacks tagged (written here, not with
dualwrite's own event codec: the log is the test's independent record).

Large text and bytes (over BIG bytes) are logged as their SHA-256 and length (`Digest`): a 1 MB body per
document would make the log the largest thing in the test, and a digest compares just as exactly.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from enum import Enum
from typing import Any

BIG = 4096


@dataclass(frozen=True)
class Digest:
    kind: str  # "text" | "bytes"
    sha256: str
    length: int

    @classmethod
    def of(cls, value: str | bytes) -> Digest:
        data = value.encode("utf-8") if isinstance(value, str) else bytes(value)
        return cls("text" if isinstance(value, str) else "bytes", hashlib.sha256(data).hexdigest(), len(data))

    def matches(self, value: Any) -> bool:
        if not isinstance(value, str if self.kind == "text" else bytes | memoryview):
            return False
        return Digest.of(value if isinstance(value, str) else bytes(value)) == self

    def __repr__(self) -> str:
        return f"<{self.kind} of {self.length} bytes, sha256 {self.sha256[:12]}>"


def encode(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, Enum):
        return {"$enum": value.name}
    if isinstance(value, str):
        return {"$big": _digest(value)} if len(value) > BIG else value
    if isinstance(value, bytes | memoryview):
        data = bytes(value)
        return {"$big": _digest(data)} if len(data) > BIG else {"$b64": base64.b64encode(data).decode()}
    if isinstance(value, Digest):
        return {"$big": [value.kind, value.sha256, value.length]}
    if isinstance(value, Decimal):
        return {"$dec": str(value)}
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"the writers log aware timestamps only, got {value!r}")
        return {"$dt": value.isoformat()}
    if isinstance(value, date):
        return {"$d": value.isoformat()}
    if isinstance(value, uuid.UUID):
        return {"$uuid": str(value)}
    if isinstance(value, dict | list):
        return {"$json": value}
    raise TypeError(f"cannot log a {type(value).__name__}")


def _digest(value: str | bytes) -> list[Any]:
    d = Digest.of(value)
    return [d.kind, d.sha256, d.length]


def decode(value: Any, enums: dict[str, type[Enum]] | None = None, column: str = "") -> Any:
    """`enums`: column name -> its Enum class (to turn a logged name back into the member)."""
    if not isinstance(value, dict):
        return value
    ((tag, raw),) = value.items()
    if tag == "$enum":
        cls = (enums or {}).get(column)
        return cls[raw] if cls is not None else raw
    if tag == "$big":
        return Digest(*raw)
    if tag == "$b64":
        return base64.b64decode(raw)
    if tag == "$dec":
        return Decimal(raw)
    if tag == "$dt":
        return datetime.fromisoformat(raw)
    if tag == "$d":
        return date.fromisoformat(raw)
    if tag == "$uuid":
        return uuid.UUID(raw)
    if tag == "$json":
        return raw
    raise ValueError(f"unknown tag {tag!r} in the writers' log")


def encode_row(row: dict[str, Any]) -> dict[str, Any]:
    return {k: encode(v) for k, v in row.items()}
