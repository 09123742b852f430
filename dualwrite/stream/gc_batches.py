"""The garbage collector's first threshold while a replay loop or a table's copy runs.

A decoded batch is thousands of container objects (per event: its entry, fields, document, key and image
dicts, bound values, ChangeEvent) alive at once, and none of them in a cycle: they are freed by reference
counting when the batch is done. At CPython's default first threshold (700 net allocations) that alone
started a collection every ~50 events, every tenth of those a second-generation one and some a full pass
over every object of the process: 2.2-2.7 us of a worker's 12.6-13.5 us of CPU per event (a fifth).
With the threshold above what two batches hold (the one applied, the one read ahead) a collection runs
only when garbage really accumulates. Raised, never lowered, and put back when the last loop ends.
A copy's chunk (backfill Copier.copy_table, which migrate's copy runs through) is alike: rows of acyclic
tuples, read ahead, converted, COPYed; `batch` is then its chunk size.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

OBJECTS_PER_EVENT = 25  # container objects a decoded, planned event holds at most (measured ~15), x2 batches

_lock = threading.Lock()
_active = 0
_saved: tuple[int, int, int] | None = None


@contextmanager
def batch_gc(batch: int) -> Iterator[None]:
    """Raise the first threshold to hold two batches of `batch` events while the block runs."""
    global _active, _saved
    with _lock:
        current = gc.get_threshold()
        if _active == 0:
            _saved = current
        _active += 1
        want = 2 * OBJECTS_PER_EVENT * batch
        if current[0] and want > current[0]:  # 0: collection is off, leave it off
            gc.set_threshold(want, current[1], current[2])
    try:
        yield
    finally:
        with _lock:
            _active -= 1
            if _active == 0 and _saved is not None:
                gc.set_threshold(*_saved)
                _saved = None
