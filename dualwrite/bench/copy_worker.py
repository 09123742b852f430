"""One history-copy method in its own process (so its peak RSS is its own):

    python -m dualwrite.bench.copy_worker METHOD SQLITE_PATH POSTGRES_URL SCHEMA

Prints one JSON line {"method", "rows", "seconds"} (seconds: inside the process, after imports)."""

from __future__ import annotations

import json
import sqlite3
import sys
import time

from sqlalchemy import insert, select

from dualwrite.bench.common import bench_metadata

BATCH = 5000
# The Copier's chunk in the bench (`backfill run --chunk-size`): a ranged table's chunk holds its range lock
# for its transaction, so a live apply of that table waits at most for one chunk of this many rows.
COPIER_CHUNK = 20_000


def copier(sqlite_path: str, pg_url: str, schema: str) -> int:
    from dualwrite.backfill.copier import Copier
    from dualwrite.engines import postgres_engine, sqlite_read_engine

    _md, table = bench_metadata()
    pg = postgres_engine(pg_url, schema, replica=True)
    rep = Copier(sqlite_read_engine(f"sqlite:///{sqlite_path}"), pg, chunk_size=COPIER_CHUNK).copy_table(table)
    return rep.rows_copied


def rerun(sqlite_path: str, pg_url: str, schema: str) -> int:
    """The idempotent re-run over a full target: the copier's schema, its checkpoints forgotten, copied again
    (every chunk finds its span's range at its version: nothing is rewritten, every row is compared)."""
    from dualwrite.backfill import checkpoint as ckpt
    from dualwrite.engines import postgres_engine

    engine = postgres_engine(pg_url, schema)
    ckpt.reset(engine)
    engine.dispose()
    return copier(sqlite_path, pg_url, schema)


def raw_copy(sqlite_path: str, pg_url: str, schema: str) -> int:
    import psycopg
    from sqlalchemy.engine import make_url

    _md, table = bench_metadata()
    cols = [c.name for c in table.columns]
    url = make_url(pg_url)
    dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    src = sqlite3.connect(sqlite_path)
    cur = src.execute(f"SELECT {', '.join(cols)} FROM {table.name} ORDER BY id")
    n = 0
    with psycopg.connect(dsn) as conn, conn.cursor() as pc:
        with pc.copy(f'COPY "{schema}".{table.name} ({", ".join(cols)}) FROM STDIN') as cp:
            while batch := cur.fetchmany(BATCH):
                for row in batch:
                    cp.write_row(row)
                n += len(batch)
    src.close()
    return n


def executemany(sqlite_path: str, pg_url: str, schema: str) -> int:
    from dualwrite.engines import postgres_engine, sqlite_read_engine

    _md, table = bench_metadata()
    src = sqlite_read_engine(f"sqlite:///{sqlite_path}")
    dst = postgres_engine(pg_url, schema)
    n = 0
    with src.connect() as sc:
        result = sc.execution_options(stream_results=True).execute(select(table).order_by(table.c.id))
        for part in result.mappings().partitions(BATCH):
            with dst.begin() as dc:
                dc.execute(insert(table), [dict(r) for r in part])
            n += len(part)
    return n


METHODS = {"copier": copier, "rerun": rerun, "copy": raw_copy, "executemany": executemany}


def main(argv: list[str]) -> None:
    method, sqlite_path, pg_url, schema = argv
    t0 = time.perf_counter()
    n = METHODS[method](sqlite_path, pg_url, schema)
    print(json.dumps({"method": method, "rows": n, "seconds": time.perf_counter() - t0}))


if __name__ == "__main__":
    main(sys.argv[1:])
