"""What a copy loop needs of a copier, so that the loops (lanes.py, leases.py) never import the Copier:
the report it fills per table and the steps it calls per chunk, as plain callables."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, Table

from dualwrite.apply.rule import ApplyResult
from dualwrite.backfill.cursor import Chunk


@dataclass
class TableReport:  # a declarative field list (shaped like bench.runner.BenchConfig's, nothing shared)
    table: str
    rows_copied: int = 0
    rows_applied: int = 0
    rows_stale: int = 0
    rows_rejected: int = 0
    chunks: int = 0
    seconds: float = 0.0
    status: str = "pending"
    fallbacks: int = 0  # chunks merged because a live write landed in them during the fast COPY

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["rows_per_second"] = round(self.rows_copied / self.seconds, 1) if self.seconds else None
        return d


@dataclass(frozen=True)
class ChunkSteps:
    """One copier's steps: where chunks come from and go to, and what is done with each.

    - `prepare(table, chunk) -> (chunk to load, rows set aside as rejects)`
    - `apply(table, chunk, checkpoint, set_aside, save=..., before_save=...) -> (ApplyResult, rows refused)`:
      the chunk and its checkpoint in one Postgres transaction (Copier.apply_chunk)
    - `pace(rows)`: wait for the throttle before the next chunk
    """

    source: Engine  # SQLite, read
    target: Engine  # Postgres, the apply engine
    chunk_size: Callable[[], int]  # read live: `backfill set --chunk-size` changes it between chunks
    should_stop: Callable[[], bool]
    prepare: Callable[[Table, Chunk], tuple[Chunk, int]]
    apply: Callable[..., tuple[ApplyResult, int]]
    pace: Callable[[int], None]
