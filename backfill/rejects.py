"""Rows Postgres refuses go to a JSON-lines reject file (one object per row) and are counted.

Written before the chunk's transaction commits: after a crash at that moment a resumed worker writes
the same rejects again, so readers should de-duplicate on (table, key).
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dualwrite import metrics


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    return (str(orig).strip().splitlines() or [type(orig).__name__])[0][:500]


def guess_column(row: dict[str, Any]) -> str | None:
    """The column most likely refused: Postgres rejects NUL bytes in text."""
    for name, value in row.items():
        if isinstance(value, str) and "\x00" in value:
            return name
    return None


class RejectWriter:
    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path else None
        self.count = 0
        self._lock = threading.Lock()

    def reject(self, table: str, key: str, row: dict[str, Any], exc: BaseException) -> None:
        column = guess_column(row)
        record = {
            "table": table,
            "key": key,
            "column": column,
            "value": repr(row.get(column)) if column else None,
            "row": {k: repr(v) for k, v in row.items()},
            "reason": _first_line(exc),
            "at": datetime.now(UTC).isoformat(),
        }
        with self._lock:
            self.count += 1
            if self.path is not None:
                with self.path.open("a", encoding="utf-8") as fh:
                    fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        metrics.BACKFILL_REJECTS.labels(table).inc()
