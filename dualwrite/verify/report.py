"""What `dualwrite verify` found, per table and in all (the --report / --json document)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from dualwrite.verify.row_checksums import Key

MAX_KEYS_REPORTED = 1000


@dataclass
class TableReport:
    table: str
    sqlite_rows: int = 0
    postgres_rows: int = 0
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    differing: list[str] = field(default_factory=list)
    columns: dict[str, list[str]] = field(default_factory=dict)  # differing key -> the columns that differ
    queries: int = 0
    seconds: float = 0.0
    fixed: int = 0
    stale: int = 0
    unowned: list[str] = field(default_factory=list)  # differing/extra keys dualwrite never wrote: not fixed
    error: str | None = None
    # keys as tuples, for fix (not serialized)
    _keys: dict[str, list[Key]] = field(default_factory=dict, repr=False)

    @property
    def clean(self) -> bool:
        return self.error is None and not (self.missing or self.extra or self.differing)

    def counts(self) -> dict[str, int]:
        return {k: len(self._keys.get(k, getattr(self, k))) for k in ("missing", "extra", "differing")}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("_keys", None)
        d["clean"] = self.clean
        for k in ("missing", "extra", "differing"):
            d[f"{k}_count"] = len(self._keys.get(k, getattr(self, k)))
            d[k] = d[k][:MAX_KEYS_REPORTED]
        d["differing_columns"] = d.pop("columns")
        return d


@dataclass
class VerifyReport:
    tables: list[TableReport]
    at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    mode: str = "full"  # or "incremental": only the keys the change log touched since `base`
    watermark: int | None = None  # the seq high-water mark when this verify began
    base: str | None = None  # the full verify an incremental one rests on (its `at`)
    touched: int | None = None  # incremental: keys compared
    fallback: str | None = None  # incremental asked, full done: why

    @property
    def clean(self) -> bool:
        return all(t.clean for t in self.tables)

    @property
    def errored(self) -> bool:
        return any(t.error for t in self.tables)

    def to_dict(self) -> dict[str, Any]:
        fields = ("at", "clean", "mode", "watermark", "base", "touched", "fallback")  # the JSON report's order
        return {**{f: getattr(self, f) for f in fields}, "tables": [t.to_dict() for t in self.tables]}
