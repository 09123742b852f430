"""Backfill: copy the existing SQLite rows to Postgres under the apply rule, resumable and throttled.

    from dualwrite.backfill import Copier, LeaseBook
    Copier.for_backends(backends, leases=LeaseBook(backends.postgres)).copy_tables(tables.tables())

- cursor.py      keyset pagination on the primary key; a chunk and `_dw_meta.last_seq` (S) in one read tx
- copier.py      Copier: chunks read ahead, applied with the checkpoint in the same Postgres transaction;
                 refused chunks bisected into rejects; public hooks prepare_chunk/load_rows (migrate's)
- steps.py       what the copy loops need of a copier (ChunkSteps: callables) and the TableReport they fill
- spans.py       ranged tables (apply/ranges.py): a chunk applies its whole key span at one version
- lanes.py       two chunk transactions in flight (two backends), committed strictly in key order
- leases.py      workers sharing a table: disjoint key ranges claimed under the checkpoint row's lock and
                 completed in the chunk's transaction; a dead worker's range is taken over at once
- load.py        one chunk into Postgres: COPY version rows (S) + rows into keys Postgres has never seen; a
                 unique-index conflict (a live write got there first) merges those keys through a staging table
- copy_format.py COPY FROM STDIN in text or binary (binary only where every value's type is exact)
- checkpoint.py  `_dw_backfill_checkpoints` (last key, rows copied/rejected, status, rate, lease head), the
                 lease table and each chunk's recorded version
- throttle.py    token bucket, live limits (`backfill set`), automatic back-off (Postgres latency, lag)
- progress.py    bars or log lines, the summary table, `backfill status`
- dryrun.py      `backfill run --dry-run`: every chunk validated in a rolled-back transaction
- reset.py       `backfill reset`: delete the rows the backfill wrote, then its progress
- rejects.py     the JSON-lines reject file
- worker.py      `backfill run`: copy then replay, /metrics + /health, heartbeat for status

The change stream's replay and dead letters live in `dualwrite.stream`. Several `backfill run` workers may
share the copy (through leases.py, which the CLI always uses). A bare Copier without leases still works
alone per table; do not mix it with leased workers on the same table.
"""

from dualwrite.backfill.copier import Copier
from dualwrite.backfill.leases import LeaseBook
from dualwrite.backfill.steps import TableReport

__all__ = ["Copier", "LeaseBook", "TableReport"]
