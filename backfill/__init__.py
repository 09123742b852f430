"""Backfill: copy existing SQLite rows to Postgres, then replay the change stream (one file per role).

- cursor.py      keyset pagination on the primary key; a chunk and `_dw_meta.last_seq` (S) in one read tx
- copier.py      chunk -> COPY into a TEMP staging table -> claim versions (S) + upsert winners, with the
                 checkpoint in the same Postgres transaction; bisect refused chunks into rejects
- checkpoint.py  `_dw_backfill_checkpoints` (table, last key JSON, rows copied/rejected, status, updated_at)
- rejects.py     JSON-lines reject file
- throttle.py    token bucket (--max-rows-per-second)
- replay.py      consumer group replay, dead letters, XAUTOCLAIM, redrive
- cli.py         `dualwrite backfill run|status|reset|deadletters`

One worker per table at a time: two copiers on the same table would both be correct row-wise (the apply
rule), but their checkpoints would overwrite each other.
"""
