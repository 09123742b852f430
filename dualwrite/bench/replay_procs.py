"""The processes of the replay section (replay_bench.py): a replay worker, or one process of the ceiling
(direct apply of every n-th batch), each reporting its start, its end and the CPU it and its Postgres
backend used. Run as `python -m dualwrite.bench.replay_procs <settings json> <group> <consumer> <mode>`."""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

from dualwrite.bench.common import bench_metadata, bench_tables
from dualwrite.bench.replay_bench import BATCH


def _worker(conf: dict[str, str], group: str, consumer: str, mode: str) -> None:
    """One replay worker process: ready (connected, catalog read), go, replay (until caught up, or until
    "stop" on stdin), report its start and the end of its last batch."""
    from dualwrite.adapter import DualWriter
    from dualwrite.apply.statements import statements
    from dualwrite.settings import load_settings
    from dualwrite.stream.replay import Replayer

    _md, table = bench_metadata()
    dw = DualWriter(load_settings(env={}, **conf), bench_tables(table), relay=False)
    if mode.startswith("direct:"):
        return _direct_worker(dw, table, int(consumer[1:]), int(mode.split(":")[1]))
    rp = Replayer(dw.backends, dw.tables, group=group, consumer=consumer, batch=BATCH, block_ms=50)
    rp.ensure_group()
    statements.get(dw.backends.postgres_direct, table)
    print("ready", flush=True)
    sys.stdin.readline()
    c0 = _cpu(dw)
    start = time.time()
    if mode == "daemon":
        stop = threading.Event()
        threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
        stats = rp.run(should_stop=stop.is_set)
        end = time.time()
    else:
        # run(once=True) as `dualwrite backfill replay --once` runs (its read-ahead included), timing the end
        # of the last batch rather than the final empty poll
        last = [start]
        step = rp.step

        def timed_step(block_ms: int | None = None) -> int:
            n = step(block_ms)
            if n:
                last[0] = time.time()
            return n

        rp.step = timed_step  # type: ignore[method-assign]
        stats = rp.run(once=True)
        end = last[0]
    print(json.dumps({"start": start, "end": end, "stats": stats.as_dict(), **_cpu(dw, c0)}), flush=True)
    dw.close()


def _direct_worker(dw: Any, table: Any, share: int, n: int) -> None:
    """One process of the ceiling: read the stream once before "go", then decode and apply every n-th
    batch (starting at `share`) directly, as direct_apply does."""
    from dualwrite.apply.statements import statements
    from dualwrite.events import ChangeEvent
    from dualwrite.redis_keys import stream_key
    from dualwrite.stream.gc_batches import batch_gc
    from dualwrite.stream.protocol import EVENT_FIELD

    payloads = [f[EVENT_FIELD] for _id, f in dw.backends.redis.xrange(stream_key(dw.settings.namespace))]
    statements.get(dw.backends.postgres_direct, table)
    print("ready", flush=True)
    sys.stdin.readline()
    c0 = _cpu(dw)
    start, applied = time.time(), 0
    with batch_gc(BATCH):  # as the Replayer's loop runs (stream/gc_batches): the ceiling differs by Redis only
        for i in range(share * BATCH, len(payloads), n * BATCH):
            batch = [ChangeEvent.from_json(p) for p in payloads[i : i + BATCH]]
            dw.apply("postgres", batch)
            applied += len(batch)
    print(json.dumps({"start": start, "end": time.time(), "stats": {"applied": applied}, **_cpu(dw, c0)}), flush=True)
    dw.close()


def _cpu(dw: Any, since: dict[str, float] | None = None) -> dict[str, float]:
    """CPU seconds used so far by this process and by the Postgres backend of its apply connection (the
    pool's one: only the main thread applies); with `since` (an earlier reading), used since then. Two
    workers on two cores are bound by CPU per event, not latency. Empty where /proc cannot be read (not
    Linux, or Postgres on another host)."""
    import os

    from sqlalchemy import text

    try:
        with dw.backends.postgres_direct.connect() as conn:
            pid = conn.execute(text("SELECT pg_backend_pid()")).scalar()
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return {}
    now = {"cpu_s": time.process_time(), "pg_cpu_s": (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")}
    if since is None:
        return now
    return {k: v - since[k] for k, v in now.items()} if since else {}  # {}: the first reading failed


if __name__ == "__main__":
    _worker(json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4])
