"""A seeded dual-write workload on the core tables (items, pairs), and a writer that has run it (`running_workload`)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import delete, insert, update

from dualwrite.adapter import DualWriter
from dualwrite.settings import Settings
from dualwrite.testing import prepared_writer
from tests.core.support import catalog, items, pairs, row


class Workload:
    def __init__(self, dw: DualWriter, seed: int, start: int = 0) -> None:
        self.dw, self.rng, self.next_id = dw, random.Random(seed), start
        self.ids: list[int] = []
        self.rows_written = 0
        self.errors: list[BaseException] = []

    def step(self) -> None:
        """One transaction: an insert, an update, a delete or a multi-statement upsert."""
        r = self.rng.random()
        n = self.rng.randrange(1, 10_000)
        if r < 0.45 or len(self.ids) < 3:
            new = list(range(self.next_id, self.next_id + self.rng.randrange(1, 4)))
            self.next_id += len(new)
            self.dw.execute(insert(items).values([row(i, n) for i in new]))
            self.ids += new
            self.rows_written += len(new)
        elif r < 0.7:
            i = self.rng.choice(self.ids)
            self.dw.execute(update(items).where(items.c.id == i).values(name=f"u{n}", qty=n))
            self.rows_written += 1
        elif r < 0.8:
            i = self.ids.pop(self.rng.randrange(len(self.ids)))
            self.dw.execute(delete(items).where(items.c.id == i))
            self.rows_written += 1
        else:
            i = self.rng.choice(self.ids)
            with self.dw.begin() as tx:
                tx.upsert(items, [row(i, n)], ["id"])
                tx.upsert(pairs, [{"a": i, "b": f"k{n % 5}", "v": n}], ["a", "b"])
            self.rows_written += 2

    def run(self, steps: int) -> int:
        before = self.rows_written
        for _ in range(steps):
            self.step()
        return self.rows_written - before

    def run_tolerant(self, steps: int) -> int:
        """Like run, but a failing write is recorded instead of raised (the primary refused it)."""
        before = self.rows_written
        for _ in range(steps):
            try:
                self.step()
            except Exception as exc:  # noqa: BLE001
                self.errors.append(exc)
        return self.rows_written - before


@contextmanager
def running_workload(
    settings: Settings, seed: int, steps: int, *, phase: str = "dual_write", relay: bool = True
) -> Iterator[tuple[DualWriter, Workload]]:
    """A writer on the core tables in `phase` with `seed`'s workload run `steps` steps; closed afterwards."""
    with prepared_writer(settings, catalog(), phase=phase, relay=relay) as dw:
        wl = Workload(dw, seed)
        wl.run(steps)
        yield dw, wl
