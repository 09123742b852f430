"""Backfill: copy existing SQLite rows to Postgres, then replay the change stream (one file per role).

- cursor.py      keyset pagination on the primary key; a chunk and `_dw_meta.last_seq` (S) in one read tx
- copier.py      chunks read ahead, applied with the checkpoint in the same Postgres transaction; bisect
                 refused chunks into rejects; public hooks prepare_chunk/load_rows (migrate uses them)
- pipeline.py    two chunk transactions in flight (two backends), committed strictly in key order
- fastpath.py    COPY version rows (S) + rows straight into keys Postgres has never seen; a unique-index
                 conflict (a live write got there first) rolls back to a savepoint and merges those keys
- merge.py       COPY into a TEMP staging table -> claim versions (S) + upsert winners, one statement
- copyio.py, binary.py, keys.py   COPY encoding (binary where exact, column-wise text for psycopg2), key text
- checkpoint.py  `_dw_backfill_checkpoints` (last key, rows copied/rejected, status, rate, lease head), the
                 lease table and each chunk's recorded version
- leases.py      workers sharing a table: disjoint key ranges claimed under the checkpoint row's lock and
                 completed in the chunk's transaction; a dead worker's range is taken over at once
- control.py     live limits (`backfill set`) and the automatic back-off (Postgres latency, replica lag)
- worker.py      `backfill run`: copy then replay, /metrics + /health, heartbeat for status
- progress.py    bars on a terminal, log lines otherwise; the end-of-copy summary table
- status.py      `backfill status`: rows done/total, rate, ETA, state, workers and throttling
- dryrun.py      `backfill run --dry-run`: every chunk validated in a rolled-back transaction
- rollback.py    `backfill reset`: delete the rows the backfill wrote, then its progress
- rejects.py     JSON-lines reject file
- throttle.py    token bucket (--max-rows-per-second)
- replay.py      consumer group replay (NOGROUP recreates the group at 0), XAUTOCLAIM, lag
- deadletters.py the dead-letter stream: write, list (binary payloads escaped), redrive
- cli.py         `dualwrite backfill run|status|set|reset|deadletters`

Several `backfill run` workers may share the copy (through leases.py, which the CLI always uses). A bare
Copier without leases still works alone per table; do not mix it with leased workers on the same table.
"""
