"""A table's copy runs with the collector's first threshold above two chunks' worth (stream/gc_batches.py),
on the Copier's own path and on the leased one `backfill run` takes, and puts it back when it is done."""

from __future__ import annotations

import gc

import pytest

from dualwrite.backfill.copier import Copier
from dualwrite.backfill.cursor import Chunk
from dualwrite.backfill.leases import LeaseBook
from dualwrite.stream.gc_batches import OBJECTS_PER_EVENT
from tests.backfill.support import accounts, seed


class Watched(Copier):
    """Notes the first threshold each time a chunk is prepared (a chunk is in memory then)."""

    seen: list[int]

    def prepare_chunk(self, table, chunk: Chunk) -> tuple[Chunk, int]:  # type: ignore[no-untyped-def]
        self.seen.append(gc.get_threshold()[0])
        return super().prepare_chunk(table, chunk)


@pytest.mark.parametrize("leased", [False, True])
def test_copy_table_holds_the_threshold_and_puts_it_back(dw, leased) -> None:  # type: ignore[no-untyped-def]
    seed(dw, 60)
    before = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        leases = LeaseBook(dw.backends.postgres) if leased else None
        copier = Watched(dw.backends.sqlite_read, dw.backends.postgres_apply, chunk_size=20, leases=leases)
        copier.seen = []
        (rep,) = copier.copy_tables([accounts])
        assert (rep.rows_copied, rep.status) == (60, "done")
        assert copier.seen and set(copier.seen) == {2 * OBJECTS_PER_EVENT * 20}  # 1,000 > the default 700
        assert gc.get_threshold() == (700, 10, 10)
    finally:
        gc.set_threshold(*before)
