"""Rows Postgres refuses go to a JSON-lines reject file (one object per row) and are counted.

Written before the chunk's transaction commits: after a crash at that moment a resumed worker writes
the same rejects again, so readers should de-duplicate on (table, key).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dualwrite import metrics
from dualwrite.errors import first_line

VALUE_CHARS = 200  # a rejected value is kept as its repr, cut to this many characters


class RefusedValue(ValueError):
    """A value the copy could not take (it could not be read as its column's type): the row is a reject."""

    def __init__(self, column: str, value: Any, reason: str) -> None:
        super().__init__(reason)
        self.column, self.value = column, value


def guess_column(row: dict[str, Any]) -> str | None:
    """The column most likely refused: Postgres rejects NUL bytes in text."""
    for name, value in row.items():
        if isinstance(value, str) and "\x00" in value:
            return name
    return None


_COPY_COLUMN = re.compile(r"\bcolumn (\w+)")


def refused_column(row: dict[str, Any], exc: BaseException) -> str | None:
    """The column a reject is about: the one named by the error (ours, or COPY's context line, e.g.
    `COPY t, line 1, column n: "abc"`), else the one with a NUL byte."""
    if isinstance(exc, RefusedValue):
        return exc.column
    context = getattr(getattr(getattr(exc, "orig", exc), "diag", None), "context", None) or ""
    found = _COPY_COLUMN.search(context)
    if found and found.group(1) in row:
        return found.group(1)
    return guess_column(row)


def shown(value: Any) -> str:
    """A rejected value as its repr, truncated."""
    text = repr(value)
    return text if len(text) <= VALUE_CHARS else text[: VALUE_CHARS - 3] + "..."


class RejectWriter:
    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path else None
        self.count = 0
        self._lock = threading.Lock()

    def reject(self, table: str, key: str, row: dict[str, Any], exc: BaseException) -> None:
        column = refused_column(row, exc)
        record = {
            "table": table,
            "key": key,
            "column": column,
            "value": shown(row.get(column)) if column else None,
            "row": {k: shown(v) for k, v in row.items()},
            "reason": first_line(exc),
            "at": datetime.now(UTC).isoformat(),
        }
        self.record(table, json.dumps(record, ensure_ascii=False))

    def record(self, table: str, line: str) -> None:
        """Append one JSON line, then count it: a failed write raises and counts nothing (the chunk's
        transaction then rolls back, so the row is neither loaded nor lost: the next run meets it again)."""
        # backslashreplace: a lone surrogate (from a key's text) still makes a line json.loads can read.
        data = (line + "\n").encode("utf-8", "backslashreplace")
        with self._lock:
            if self.path is not None:
                _append(self.path, data)
            self.count += 1
        metrics.BACKFILL_REJECTS.labels(table).inc()


def _append(path: Path, data: bytes) -> None:
    """Write `data` at the end of the file or raise, leaving no half line behind if nobody else wrote since.
    The file and its folder are made with the first line: a run that rejects nothing leaves neither."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab", buffering=0) as fh:
        end = fh.seek(0, os.SEEK_END)
        written = 0
        try:
            while written < len(data):
                n = fh.write(data[written:])
                if not n:
                    raise OSError(errno.EIO, f"short write to {path}")
                written += n
        except BaseException:
            with contextlib.suppress(OSError):
                if os.fstat(fh.fileno()).st_size == end + written:
                    os.ftruncate(fh.fileno(), end)
            raise
