"""Section 5: replay throughput (backfill.replay.Replayer): events/s from the Redis stream into Postgres,
vs applying the same events straight from the outbox with the apply rule (no Redis): the baseline."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import insert, select

from benchmarks.common import BenchEnv, bench_catalog, bench_metadata, ratio, rows

BATCH = 500


def run(env: BenchEnv, events: int, log: Any = print) -> dict[str, Any]:
    try:
        from backfill.replay import Replayer
    except ImportError as exc:
        return {"skipped": f"backfill.replay not importable: {exc}"}
    from dualwrite.events import ChangeEvent
    from dualwrite.relay import Relay
    from dualwrite.stream import EVENT_FIELD, stream_key
    from dualwrite.testing import prepared_writer

    md, table = bench_metadata()
    dw = prepared_writer(env.settings("replay"), metadata=md, catalog=bench_catalog(table), phase="sqlite")
    try:
        data = rows(table, events)
        step = 100
        for i in range(0, len(data), step):  # captured writes: outbox rows, Postgres not written (phase sqlite)
            with dw.begin() as tx:
                tx.execute(insert(table), data[i : i + step])
        relay = Relay.for_writer(dw)
        if not relay.drain(timeout=120):
            return {"skipped": "relay did not drain the outbox"}
        # baseline: apply the same events (decoded from the stream) directly, in batches, into a fresh schema
        entries = dw.redis.xrange(stream_key(dw.settings.namespace))
        evs = [ChangeEvent.from_json(f[EVENT_FIELD]) for _id, f in entries]
        base_env = prepared_writer(
            env.settings("replay_base"), metadata=md, catalog=bench_catalog(table), phase="sqlite"
        )
        try:
            t0 = time.perf_counter()
            for i in range(0, len(evs), BATCH):
                base_env.apply("postgres", evs[i : i + BATCH])
            base_s = time.perf_counter() - t0
        finally:
            base_env.close()
        rep = Replayer(dw, batch=BATCH, block_ms=50)
        t0 = time.perf_counter()
        stats = rep.run(once=True)
        rep_s = time.perf_counter() - t0
        with dw.postgres.connect() as conn:
            landed = len(conn.execute(select(table.c.id)).all())
        base_eps = len(evs) / base_s if base_s else 0.0
        rep_eps = stats.applied / rep_s if rep_s else 0.0
        log(f"  replay: {rep_eps:.0f} events/s vs direct apply {base_eps:.0f} events/s")
        return {
            "events": len(evs),
            "landed": landed,
            "baseline": "direct apply_events (no Redis)",
            "results": [
                {"method": "direct apply", "events_per_s": round(base_eps, 1), "seconds": round(base_s, 3)},
                {
                    "method": "Replayer",
                    "events_per_s": round(rep_eps, 1),
                    "seconds": round(rep_s, 3),
                    "stats": stats.as_dict(),
                    "ratio": ratio(rep_eps, base_eps),
                },
            ],
        }
    finally:
        dw.close()
