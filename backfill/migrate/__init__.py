"""`dualwrite migrate`: one-shot SQLite → PostgreSQL migration through the backfill Copier.

reflect (schema.py) → cast rules (types.py) → create tables without FKs → copy (load.py, via
backfill.copier.Copier: COPY chunks, checkpoints, rejects) → indexes/uniques → foreign keys → views →
sequences → verify counts + hashes (check.py).
"""
