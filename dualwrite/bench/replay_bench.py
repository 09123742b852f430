"""Section 5: replay throughput (backfill.replay.Replayer): events/s from the Redis stream into Postgres by 1 and
2 workers, vs applying the same events straight from the outbox with the apply rule (no Redis): the baseline;
and the replay lag under a steady write load like the demo's (3 writers, 10 ms between writes).

Workers run in their own processes (as `dualwrite backfill run` does; threads would share one GIL). Each
builds its writer, says "ready", waits for "go", replays until the group has nothing left and reports its
own start and end (wall clock), so interpreter start-up is not counted."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from typing import Any

from sqlalchemy import insert, select, update

from dualwrite.bench.common import BenchEnv, bench_metadata, bench_tables, ratio, rows

BATCH = 500
LOAD_WRITERS, LOAD_PAUSE_S = 3, 0.01  # the demo's Traffic defaults


def _spawn(settings: Any, group: str, consumer: str, mode: str) -> subprocess.Popen[str]:
    conf = {k: getattr(settings, k) for k in ("sqlite_url", "postgres_url", "redis_url", "namespace", "pg_schema")}
    cmd = [sys.executable, "-m", "dualwrite.bench.replay_bench", json.dumps(conf), group, consumer, mode]
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def _workers(settings: Any, group: str, n: int, mode: str = "once") -> list[subprocess.Popen[str]]:
    procs = [_spawn(settings, group, f"w{i}", mode) for i in range(n)]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready", "replay worker did not start"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    return procs


def _results(procs: list[subprocess.Popen[str]], timeout: float) -> list[dict[str, Any]]:
    out = []
    for p in procs:
        stdout, _ = p.communicate(timeout=timeout)
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def replay_with_workers(env: BenchEnv, ns: str, md: Any, table: Any, n: int, label: str) -> dict[str, Any]:
    """Replay the whole stream into a fresh schema with n worker processes of one new group: events/s over
    the first start to the last end, events applied, rows that landed."""
    from dualwrite.testing import prepared_writer

    dw = prepared_writer(env.settings(label).with_(namespace=ns), bench_tables(table))
    try:
        reports = _results(_workers(dw.settings, f"bench-{label}", n), timeout=1800)
        with dw.backends.postgres.connect() as conn:
            landed = len(conn.execute(select(table.c.id)).all())
    finally:
        dw.close()
    applied = sum(r["stats"]["applied"] for r in reports)
    seconds = max(r["end"] for r in reports) - min(r["start"] for r in reports)
    eps = applied / seconds if seconds else 0.0
    return {"events_per_s": eps, "applied": applied, "seconds": seconds, "landed": landed}


def lag_under_load(env: BenchEnv, md: Any, table: Any, seconds: float) -> dict[str, Any]:
    """Phase sqlite (Postgres gets nothing inline: every event waits for the replay), the relay in the
    background, one replay worker, the demo's writers for `seconds`; lag sampled every 0.1 s."""
    from dualwrite.stream.protocol import group_lag
    from dualwrite.stream.relay import Relay
    from dualwrite.stream.replay import Replayer
    from dualwrite.testing import prepared_writer

    dw = prepared_writer(env.settings("replay_load"), bench_tables(table))
    relay = Relay.for_backends(dw.backends)
    stop = threading.Event()
    written = [0] * LOAD_WRITERS

    def writer(i: int) -> None:
        n = 0
        while not stop.is_set():
            key = 1_000_000 * (i + 1) + n // 2
            with dw.begin() as tx:  # an insert, then an update of it: the demo's mix of new and changed rows
                if n % 2 == 0:
                    tx.execute(insert(table), rows(table, 1, start=key))
                else:
                    tx.execute(update(table).where(table.c.id == key).values(title=f"changed {n}"))
            n += 1
            written[i] = n
            time.sleep(LOAD_PAUSE_S)

    try:
        rp = Replayer(dw.backends, dw.tables, group="bench-load")
        rp.ensure_group()
        (proc,) = _workers(dw.settings, "bench-load", 1, mode="daemon")
        relay.start()
        threads = [threading.Thread(target=writer, args=(i,), daemon=True) for i in range(LOAD_WRITERS)]
        samples: list[int] = []
        t0 = time.monotonic()
        for t in threads:
            t.start()
        while time.monotonic() - t0 < seconds:
            samples.append(sum(group_lag(dw.backends.redis, rp.key, rp.group)))
            time.sleep(0.1)
        stop.set()
        for t in threads:
            t.join()
        load_s = time.monotonic() - t0
        t_stop = time.monotonic()
        relay.stop()  # from here on publish in this thread, so "backlog 0" covers the last writes
        while relay.run_once() or relay.backlog or sum(group_lag(dw.backends.redis, rp.key, rp.group)):
            if time.monotonic() - t_stop > 120:
                break
            time.sleep(0.01)
        drain_s = time.monotonic() - t_stop
        assert proc.stdin is not None
        proc.stdin.write("stop\n")
        proc.stdin.flush()
        (report,) = _results([proc], timeout=60)
        events = report["stats"]["applied"] + report["stats"]["stale"]
        return {
            "writes": sum(written),
            "writes_per_s": round(sum(written) / load_s, 1),
            "events_replayed": events,
            "max_lag_events": max(samples, default=0),
            "mean_lag_events": round(sum(samples) / len(samples), 1) if samples else 0,
            "samples_at_zero_lag_pct": round(100 * samples.count(0) / len(samples), 1) if samples else 0,
            "seconds_to_zero_after_writes_stop": round(drain_s, 3),
        }
    finally:
        stop.set()
        relay.stop()
        dw.close()


def run(env: BenchEnv, events: int, log: Any = print) -> dict[str, Any]:
    try:
        from dualwrite.stream.replay import Replayer  # noqa: F401 - the section needs it
    except ImportError as exc:
        return {"skipped": f"backfill.replay not importable: {exc}"}
    from dualwrite.events import ChangeEvent
    from dualwrite.stream.protocol import EVENT_FIELD, stream_key
    from dualwrite.stream.relay import Relay
    from dualwrite.testing import prepared_writer

    md, table = bench_metadata()
    dw = prepared_writer(env.settings("replay"), bench_tables(table), phase="sqlite")
    try:
        data = rows(table, events)
        step = 100
        for i in range(0, len(data), step):  # captured writes: outbox rows, Postgres not written (phase sqlite)
            with dw.begin() as tx:
                tx.execute(insert(table), data[i : i + step])
        relay = Relay.for_backends(dw.backends)
        if not relay.drain(timeout=120):
            return {"skipped": "relay did not drain the outbox"}
        # baseline: apply the same events (decoded from the stream) directly, in batches, into a fresh schema
        entries = dw.backends.redis.xrange(stream_key(dw.settings.namespace))
        evs = [ChangeEvent.from_json(f[EVENT_FIELD]) for _id, f in entries]
        base_env = prepared_writer(env.settings("replay_base"), bench_tables(table), phase="sqlite"
        )
        try:
            t0 = time.perf_counter()
            for i in range(0, len(evs), BATCH):
                base_env.apply("postgres", evs[i : i + BATCH])
            base_s = time.perf_counter() - t0
        finally:
            base_env.close()
        base_eps = len(evs) / base_s if base_s else 0.0
        ns = dw.settings.namespace
        results: list[dict[str, Any]] = [
            {"method": "direct apply", "events_per_s": round(base_eps, 1), "seconds": round(base_s, 3)}
        ]
        landed = 0
        for n in (1, 2):
            r = replay_with_workers(env, ns, md, table, n, f"replay_w{n}")
            eps = r["events_per_s"]
            results.append(
                {"method": "Replayer" if n == 1 else f"Replayer x{n} workers", "events_per_s": round(eps, 1),
                 "seconds": round(r["seconds"], 3), "applied": r["applied"], "ratio": ratio(eps, base_eps)}
            )  # fmt: skip
            log(f"  replay, {n} worker(s): {eps:.0f} events/s vs direct apply {base_eps:.0f} events/s")
            landed = r["landed"] if n == 1 else landed
        load = lag_under_load(env, md, table, seconds=min(10.0, max(2.0, events / 2000)))
        log(
            f"  under {load['writes_per_s']} writes/s: lag max {load['max_lag_events']} events, at 0 in "
            f"{load['samples_at_zero_lag_pct']} % of samples, 0 {load['seconds_to_zero_after_writes_stop']} s "
            "after the writes stop"
        )
        return {
            "events": len(evs),
            "landed": landed,
            "baseline": "direct apply_events (no Redis)",
            "results": results,
            "lag_under_load": load,
        }
    finally:
        dw.close()


def _worker(conf: dict[str, str], group: str, consumer: str, mode: str) -> None:
    """One replay worker process: ready, go, replay (until caught up, or until "stop" on stdin), report."""
    from dualwrite.adapter import DualWriter
    from dualwrite.settings import load_settings
    from dualwrite.stream.replay import Replayer

    _md, table = bench_metadata()
    dw = DualWriter(load_settings(env={}, **conf), bench_tables(table))
    rp = Replayer(dw.backends, dw.tables, group=group, consumer=consumer, batch=BATCH, block_ms=50)
    rp.ensure_group()
    print("ready", flush=True)
    sys.stdin.readline()
    stop = threading.Event()
    if mode == "daemon":
        threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
    start = time.time()
    stats = rp.run(once=mode == "once", should_stop=stop.is_set)
    print(json.dumps({"start": start, "end": time.time(), "stats": stats.as_dict()}), flush=True)
    dw.close()


if __name__ == "__main__":
    _worker(json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4])
